"""The device registry: rows in PostgreSQL, mirrored for ingesters into a JetStream KV bucket."""
