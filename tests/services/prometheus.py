"""Fixtures that start Debian's Prometheus as a real upstream. (To be written.)"""
