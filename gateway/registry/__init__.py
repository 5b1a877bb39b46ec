"""The registry of orgs, tokens and data sources: models (no I/O), SQL store, encryption."""
