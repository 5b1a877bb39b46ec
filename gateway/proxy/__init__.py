"""The streaming data-source proxy: policy, credential injection, forwarding, upstream pool."""
