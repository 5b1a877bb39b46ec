"""The listening side of the hot path: an HTTP/1.1 server protocol in front of aiohttp."""
