"""HTTP handlers: thin functions that parse, call the registry / proxy / monitor, and render."""
