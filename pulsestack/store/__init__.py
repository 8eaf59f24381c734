"""PostgreSQL: migrations, partitions, and the batched writes of each stage."""
