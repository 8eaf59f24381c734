"""The raw and pulse stages: durable JetStream consumers writing to PostgreSQL."""
