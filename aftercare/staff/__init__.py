"""Staff accounts: argon2-hashed passwords, roles, and per-user API tokens."""
