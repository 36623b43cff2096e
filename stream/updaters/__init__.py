"""The per-coordinate updaters: micro-batches of examples into warm-start Newton updates of entity states."""
