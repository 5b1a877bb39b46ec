"""The registry of orgs, tokens and data sources.

- `interface`: the contract every other module depends on (`Registry`, `RegistryBatch`,
  `RegistryBackend`, their errors);
- `backends`: picks the backend from the settings;
- `sqlite/`: the SQLite backend (a second backend goes in a package beside it);
- `models` (records, no I/O), `secrets` (encryption at rest), `identifiers` (generated names and
  ids), `write_rules` (what a write decides whatever the database: a new source's name, uid
  and default, when a delete is refused), `cache` (every source in memory, refreshed on change
  notification).
"""
