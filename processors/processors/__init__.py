"""The raw stage: a durable JetStream consumer storing readings, and what they derive, in PostgreSQL."""
