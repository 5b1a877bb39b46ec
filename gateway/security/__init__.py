"""Who may do what: API tokens, roles and orgs."""
