"""NATS JetStream: stream layout, pipelined publishing, batch consumption, quarantine and dead letters."""
