"""Partition stores on RocksDB, their changelogs, and the fixed layouts of entity states."""
