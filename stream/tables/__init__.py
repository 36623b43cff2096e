"""The models as every stage reads them: the global model and its feature indexes, per-entity coefficient tables, and
the follower that keeps them current from the compacted topics.

The joiner indexes and scores examples with them, the refit and the backtest read them, and the scorer serves from
them; scoring (:mod:`stream.scoring`) is one reader among these.

- :mod:`stream.tables.models`: the global model and the in-memory coefficient tables, highest version per key.
- :mod:`stream.tables.stored_table`: a coefficient table on RocksDB with a cache of hot entities.
- :mod:`stream.tables.indexing`: feature bags resolved to every coordinate's columns, once per model version.
- :mod:`stream.tables.hash_index`: the same resolution over decoded batches, in a compiled table per index version.
- :mod:`stream.tables.follower`: the follower of the compacted model topics (and, for the scorer, the items topic).
"""
