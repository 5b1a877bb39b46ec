"""Fixtures that start Debian's InfluxDB 1.x (`influxd`) as a real upstream. (To be written.)"""
