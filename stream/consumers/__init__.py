"""The joiner: impressions and interactions joined into labeled examples, in event time, on RocksDB state."""
