"""Reaching a data source's upstream, shared by the proxy, the probes and the APIs.

`credentials`: the headers (and TLS choice) a source's upstream expects, by Grafana's rules;
`influx`: the InfluxDB bucket listings behind `/api/v2/sources/{id}/buckets`, over aiohttp.
The proxied hot path's own connection pool is `gateway/proxy/upstream.py`. Nothing here imports
`gateway.api`, `gateway.health` or `gateway.proxy`: those depend on this package, not the reverse.
"""
