"""The streaming data-source proxy.

- `routes.py`: the proxied routes, each declared once; `resolve.py`: how each finds its source
  and upstream target;
- `pipeline.py`: what every proxied request goes through, from request id to log line;
- `front_carrier.py`, `aiohttp_carrier.py`: the two servers' thin adapters onto the pipeline;
- `forward.py`: one request forwarded and streamed both ways; `headers.py`, `policy.py`,
  `ssrf.py`: the rules it applies; `upstream.py`, `http1.py`: the upstream connection pool.
"""
