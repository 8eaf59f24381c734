"""swarm-exporter: what swarm itself knows (replicas, nodes) and whether PostgreSQL answers, as metrics."""
