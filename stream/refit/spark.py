"""The refit and the bootstrap on Spark (``refit.engine = "spark"``): executors read and sum, the driver decides.

What runs where, for one refit:

* **Executors read.** Each archive file is one task: the package's own Avro reader
  (:meth:`~stream.archive.files.ArchiveFiles.scanned`, the compiled scan of the file's
  blocks; no Maven package, no Spark Avro data source) streams its examples through
  :func:`~stream.refit.window.split_records`,
  the same rule the local engine applies, and counts the vocabulary
  (:class:`~stream.refit.vocabulary.VocabularyCounter`) on the way.
* **The driver grows the vocabulary** from the added-up counts (the same
  :meth:`~stream.refit.vocabulary.VocabularyCounter.grow`), and executors move each
  file's new features to the columns the grown index gave them.
* **Chunks as the local engine cuts them.** Rows are regrouped (one shuffle) so that
  partition k holds chunk k, rows ``[k * chunk_rows, (k + 1) * chunk_rows)`` of the split
  in archive order, cached as ``.npz`` bytes (numpy's format, no pickle).
* **Sums are aggregated in a fixed order.** Every L-BFGS evaluation is one job: each
  executor computes its chunk's objective and gradient partial
  (:func:`~stream.model.game.global_partial`) at coefficients shipped with the task; the
  partials are added in groups of ``TREE_FANOUT`` consecutive chunks on the executors,
  then the groups in order on the driver. That is Spark's ``treeAggregate``, except that
  the association of the additions is the one :func:`~stream.refit.examples.tree_sum` fixes
  for every engine, so local and Spark compute bit-identical objectives and gradients and
  stop at the same iterate. The Hessian diagonal (the published variances) is summed the
  same way; the holdout's margins are computed on the executors and collected.

Everything else, the gate, the model files and publishing, is the refit's own code
(:class:`~stream.refit.job.GlobalRefit`); only where the splits live differs. The
bootstrap on Spark is :func:`spark_bootstrap_model`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from stream.archive.files import ArchiveFile, ArchiveFiles
from stream.config import Settings
from stream.consumers.labeling import IMPRESSION, INTERACTION, KIND_SCHEMAS, JoinInput
from stream.errors import GlmixError
from stream.event_log import read_events, replay_key, valid_event
from stream.model.export import index_counts, record_from_counts
from stream.model.features import FeatureKey
from stream.model.game import CoordinateSpec, RandomEffectData, RandomEffectModel, fit_random_effect
from stream.model.losses import Loss, get_loss
from stream.refit.bootstrap import (
    BootstrapError,
    BootstrapModel,
    HistoryRows,
    first_model,
    history_dataset,
    labels_of_history,
)
from stream.refit.engine import READ_BATCH, RefitEngine, RefitInputs, growable_vocabulary
from stream.refit.examples import (
    TREE_FANOUT,
    Columns,
    ExampleSplit,
    RowBatch,
    block_of,
    chunk_columns,
    ordered_sum,
    pack_columns,
    remap_columns,
    tree_sum,
    unpack_columns,
)
from stream.refit.vocabulary import VocabularyCounter
from stream.refit.window import RefitWindow, split_records
from stream.tables.models import CoefficientTable, GlobalModel
from stream.tables.stored_table import StoredCoefficientTable

log = logging.getLogger(__name__)

SPLITS = ("train", "holdout")


class SparkEngineError(GlmixError):
    """Spark cannot run here: pyspark is not installed, or no Java runtime starts; says which."""


def spark_session(settings: Settings) -> Any:
    """The active Spark session, or a new one from ``refit.spark_master`` and the ``[refit.spark]`` properties.

    Under ``spark-submit`` the session it configured is used as it is (an empty
    ``spark_master`` takes the master spark-submit gives); without, pyspark starts a local
    JVM (``local[*]`` unless ``spark_master`` says otherwise), whose driver binds to the
    loopback address unless ``[refit.spark]`` says otherwise. Python workers run
    ``spark.pyspark.python`` when ``[refit.spark]`` names one, this interpreter on a local
    master, else pyspark's default.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkEngineError(
            "refit.engine = spark needs pyspark: pip install 'glmix-stream[spark]' (and a Java 17+ runtime)"
        ) from None
    from pyspark import SparkConf

    builder = SparkSession.builder.appName(f"glmix-{settings.refit.model_name}")
    if settings.refit.spark_master:
        builder = builder.master(settings.refit.spark_master)
    master = settings.refit.spark_master or SparkConf().get("spark.master", "local[*]")
    if master.startswith("local"):  # one JVM talking to itself: never bind to the machine's network interfaces
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # read by the JVM pyspark is about to start
        for key in ("spark.driver.host", "spark.driver.bindAddress"):
            builder = builder.config(key, "127.0.0.1")
    for key, value in settings.refit.spark.items():
        builder = builder.config(key, str(value).lower() if isinstance(value, bool) else str(value))
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # py4j/pyspark raise several kinds when no JVM starts; all mean the same here
        raise SparkEngineError(f"cannot start Spark ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    context = session.sparkContext
    python = settings.refit.spark.get("spark.pyspark.python")
    if python:
        context.pythonExec = str(python)
    elif (context.master or "").startswith("local"):
        # Local workers run this interpreter, which has this package and its dependencies; pyspark's
        # default is whatever `python3` is on the PATH.
        context.pythonExec = sys.executable
    return session


class SparkExamples(ExampleSplit):
    """A split cached on Spark executors: partition k holds chunk k as ``.npz`` bytes."""

    def __init__(self, chunks: Any, dim: int, rows: int) -> None:
        self.chunks = chunks
        self.dim = dim
        self.rows = rows

    def summed(self, partial: Callable[[Columns], np.ndarray]) -> np.ndarray:
        """:func:`~stream.refit.examples.tree_sum` of ``partial`` over the chunks: groups added on executors."""

        def per_chunk(index: int, items: Iterator[bytes]) -> Iterator[tuple[int, np.ndarray]]:
            for raw in items:
                yield index, partial(unpack_columns(raw))

        partials = self.chunks.mapPartitionsWithIndex(per_chunk)
        count = self.chunks.getNumPartitions()
        if count <= TREE_FANOUT:  # one group: the driver adds the partials in chunk order
            return tree_sum(p for _, p in sorted(partials.collect(), key=lambda item: item[0]))
        groups = (
            partials.map(lambda item: (item[0] // TREE_FANOUT, item))
            .groupByKey(numPartitions=math.ceil(count / TREE_FANOUT))
            .mapValues(lambda items: ordered_sum(p for _, p in sorted(items, key=lambda item: item[0])))
            .collect()
        )
        return ordered_sum(g for _, g in sorted(groups, key=lambda item: item[0]))

    def mapped(self, per_chunk: Callable[[Columns], np.ndarray]) -> np.ndarray:
        """``per_chunk`` of every chunk, computed on the executors and concatenated in chunk order."""
        return np.concatenate(self.chunks.map(lambda raw: per_chunk(unpack_columns(raw))).collect())


def _read_file(
    item: tuple[int, ArchiveFile],
    root: str,
    window: RefitWindow,
    model: GlobalModel,
    settings: Settings,
    growable: Sequence[str],
) -> tuple[int, bytes]:
    """One archive file's train and holdout rows, provisional global features and vocabulary counts, as ``.npz``."""
    index, file = item
    archive = ArchiveFiles(root)
    loss = get_loss(settings.model.loss)
    vocabulary = VocabularyCounter(model, growable)
    parts: dict[str, list[RowBatch]] = {name: [] for name in SPLITS}
    dropped = 0
    for examples in archive.scanned([file], READ_BATCH):
        train, holdout, lost = split_records(examples, model, {}, window, settings.refit, loss, vocabulary)
        parts["train"].append(train)
        parts["holdout"].append(holdout)
        dropped += lost
    columns: dict[str, np.ndarray] = {"dropped": np.array(dropped)}
    for name, batches in parts.items():
        joined = RowBatch.concatenate(batches) if batches else _empty_rows()
        columns.update({f"{name}.{key}": array for key, array in chunk_columns(joined).items()})
    keys = vocabulary.provisional_keys
    columns["provisional.name"] = np.array([n for n, _ in keys], dtype=str)
    columns["provisional.term"] = np.array([t for _, t in keys], dtype=str)
    for coordinate, counted in vocabulary.counts.items():
        columns[f"counts.{coordinate}.name"] = np.array([n for n, _ in counted], dtype=str)
        columns[f"counts.{coordinate}.term"] = np.array([t for _, t in counted], dtype=str)
        columns[f"counts.{coordinate}.count"] = np.array(list(counted.values()), dtype=np.int64)
    return index, pack_columns(columns)


def _empty_rows() -> RowBatch:
    floats, ints = np.zeros(0), np.zeros(0, dtype=np.int64)
    return RowBatch(floats, floats, floats, floats, ints, ints, np.zeros(0, dtype=np.int32), np.zeros(0, np.float32))


def _summary(item: tuple[int, bytes], growable: Sequence[str]) -> tuple[int, dict[str, int], dict[str, Counter]]:
    """What the driver needs of a read file: its rows per split, dropped examples, and vocabulary counts."""
    index, raw = item
    columns = unpack_columns(raw)
    rows = {name: len(columns[f"{name}.labels"]) for name in SPLITS}
    rows["dropped"] = int(columns["dropped"])
    counts = {
        c: Counter(
            dict(
                zip(
                    zip(columns[f"counts.{c}.name"].tolist(), columns[f"counts.{c}.term"].tolist()),
                    columns[f"counts.{c}.count"].tolist(),
                )
            )
        )
        for c in growable
    }
    return index, rows, counts


def _split_rows(columns: Columns, split: str, first: int, admitted: Mapping[FeatureKey, int]) -> RowBatch:
    """A read file's rows of ``split``, new features moved to the grown index's columns (dropped if not admitted)."""
    keys = zip(columns["provisional.name"].tolist(), columns["provisional.term"].tolist())
    moved = np.array([admitted.get(key, -1) for key in keys], dtype=np.int64)
    own = {key[len(split) + 1 :]: array for key, array in columns.items() if key.startswith(f"{split}.")}
    remapped = remap_columns(own, first, moved)
    return RowBatch(
        remapped["labels"],
        remapped["weights"],
        remapped["offsets"],
        remapped["fixed_offsets"],
        remapped["event_times"],
        np.diff(remapped["indptr"]),
        remapped["indices"],
        remapped["values"],
    )


def _chunk_slices(
    item: tuple[int, bytes],
    split: str,
    starts: Mapping[int, int],
    chunk_rows: int,
    first: int,
    admitted: Mapping[FeatureKey, int],
) -> Iterator[tuple[int, tuple[int, bytes]]]:
    """A read file's rows of ``split`` cut where chunk boundaries fall: (chunk, (file index, rows as ``.npz``))."""
    index, raw = item
    rows = _split_rows(unpack_columns(raw), split, first, admitted)
    position = starts[index]
    while rows.rows:
        chunk = position // chunk_rows
        piece, rows = rows.head((chunk + 1) * chunk_rows - position)
        position += piece.rows
        yield chunk, (index, pack_columns(piece._asdict()))


def _assemble(items: Iterator[tuple[int, tuple[int, bytes]]]) -> Iterator[bytes]:
    """One chunk from its slices, in file order: the chunk's columns as ``.npz``."""
    pieces = sorted((index, raw) for _, (index, raw) in items)
    if pieces:
        batches = [RowBatch._make(map(unpack_columns(raw).__getitem__, RowBatch._fields)) for _, raw in pieces]
        yield pack_columns(chunk_columns(RowBatch.concatenate(batches)))


class SparkEngine(RefitEngine):
    """Reads a refit window on Spark executors into cached chunk partitions (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.archive = ArchiveFiles(settings.archive_path)
        self._session: Any = None

    @property
    def session(self) -> Any:
        """The Spark session, started on first use."""
        if self._session is None:
            self._session = spark_session(self.settings)
        return self._session

    def read(
        self,
        scope: ExitStack,
        window: RefitWindow,
        model: GlobalModel,
        tables: Mapping[str, CoefficientTable | StoredCoefficientTable],
    ) -> RefitInputs:
        """The window's splits as cached chunk partitions, unpersisted when ``scope`` closes."""
        from pyspark import StorageLevel

        context = self.session.sparkContext
        settings, growable = self.settings, growable_vocabulary(self.settings)
        files = list(enumerate(self.archive.files_between(window.start_ms, window.end_ms)))
        root = self.settings.archive_path
        parsed = (
            context.parallelize(files, max(1, len(files)))
            .map(lambda item: _read_file(item, root, window, model, settings, growable))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        scope.callback(parsed.unpersist)
        summaries = sorted(parsed.map(lambda item: _summary(item, growable)).collect(), key=lambda s: s[0])
        vocabulary = VocabularyCounter(model, growable)
        for _, _, counts in summaries:
            vocabulary.add_counts(counts)
        growth = vocabulary.grow(settings.refit.vocabulary_min_count)
        grown = growth.model.global_index
        first = model.global_index.dim
        admitted = {key: column for column, key in enumerate(grown.keys) if column >= first}
        splits = {}
        for split in SPLITS:
            starts, total = {}, 0
            for index, rows, _ in summaries:
                starts[index] = total
                total += rows[split]
            splits[split] = self._chunks(parsed, split, starts, total, first, admitted, scope, grown.dim)
        dropped = sum(rows["dropped"] for _, rows, _ in summaries)
        return RefitInputs(growth.model, window, splits["train"], splits["holdout"], dropped, growth)

    def _chunks(
        self,
        parsed: Any,
        split: str,
        starts: Mapping[int, int],
        total: int,
        first: int,
        admitted: Mapping[FeatureKey, int],
        scope: ExitStack,
        dim: int,
    ) -> SparkExamples:
        """One split regrouped into cached partitions, partition k holding chunk k."""
        from pyspark import StorageLevel

        chunk_rows = self.settings.refit.chunk_rows
        count = max(1, math.ceil(total / chunk_rows))
        chunks = (
            parsed.flatMap(lambda item: _chunk_slices(item, split, starts, chunk_rows, first, admitted))
            .partitionBy(count, lambda chunk: chunk)
            .mapPartitions(_assemble, preservesPartitioning=True)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        scope.callback(chunks.unpersist)
        chunks.count()  # cached now, while the parsed files are
        return SparkExamples(chunks, dim, total)


# --------------------------------------------------------------------------- the bootstrap on Spark


def spark_bootstrap_model(settings: Settings, paths: Sequence[str | Path]) -> tuple[BootstrapModel, dict[str, int]]:
    """:func:`~stream.refit.bootstrap.bootstrap_model` of the event files ``paths``, read and fitted on Spark.

    Executors read the files (one task each) and count the first indexes' features; the
    events are grouped by impression id and each group is labeled by the live join rule
    (:func:`~stream.refit.bootstrap.labels_of_history`) in replay order, one partition of
    groups at a time, whose last windows close at the whole history's newest event time
    (closed at the partition's own, 68 of 1,250 labels of a 250-request world were lost).
    The labeled rows are ranked in replay
    order, cut into the local engine's chunks, and fitted by the same GAME pass
    (:func:`~stream.refit.bootstrap.first_model`); each random effect's entities are
    solved on the executors holding their rows, by the same compiled Newton solver.
    Returns the model and what was read (events, invalid events).
    """
    from pyspark import StorageLevel

    from stream.event_log import writer_schema_name

    by_kind: dict[str, list[str]] = {"Impression": [], "Interaction": []}
    for path in paths:
        name = writer_schema_name(path)
        if name not in by_kind:
            raise BootstrapError(f"{path}: holds {name} records; expected Impression or Interaction container files")
        by_kind[name].append(str(path))
    files = [
        (seq, kind, path)
        for seq, (kind, path) in enumerate(
            [*((IMPRESSION, p) for p in by_kind["Impression"]), *((INTERACTION, p) for p in by_kind["Interaction"])]
        )
    ]
    context = spark_session(settings).sparkContext
    events = context.parallelize(files, max(1, len(files))).flatMap(_history_events)
    events = events.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        total = events.count()
        valid = events.filter(lambda item: item[0] is not None)
        impressions = valid.filter(lambda item: item[1][1] == IMPRESSION)
        model_settings = settings.model
        counted = impressions.mapPartitions(lambda items: [index_counts([i[1][2] for i in items], model_settings)])
        if impressions.isEmpty():
            raise BootstrapError("the history holds no impressions")
        record = record_from_counts(counted.reduce(_added_counts), settings.model)
        history_end_ms = valid.map(lambda item: item[1][2]["event_time"]).max()
        history = SparkHistory.of(settings, record, valid, history_end_ms)
        events_read = valid.count()
        read = {"events": events_read, "invalid_events": total - events_read}
        if not history.rows:
            return BootstrapModel(record), read
        try:
            return first_model(settings, record, history), read
        finally:
            history.release()
    finally:
        events.unpersist()


def _history_events(file: tuple[int, str, str]) -> Iterator[tuple[str | None, tuple[tuple, str, dict]]]:
    """One event file's records keyed by impression id with their replay-order key (None for invalid records)."""
    seq, kind, path = file
    for position, record in enumerate(read_events(path, KIND_SCHEMAS[kind])):
        key = (*replay_key(kind, record["event_time"]), seq, position)
        yield (record["impression_id"] if valid_event(kind, record) else None), (key, kind, record)


def _added_counts(a: Mapping[str, Counter], b: Mapping[str, Counter]) -> dict[str, Counter]:
    return {name: a[name] + b[name] for name in a}


def _labeled_rows(
    items: Iterator[tuple[str, tuple[tuple, str, dict]]],
    settings: Settings,
    record: Mapping[str, Any],
    history_end_ms: int,
) -> Iterator[tuple[tuple, tuple[float, np.ndarray, np.ndarray, dict[str, tuple[str, np.ndarray]]]]]:
    """The labeled impressions of one group of impression ids: (replay key, (label, global row, each coordinate's row)).

    ``history_end_ms``: the newest event time of the whole history, where the group's last windows close.
    """
    ordered = sorted((event for _, event in items), key=lambda event: event[0])
    impressions = [(key, r) for key, kind, r in ordered if kind == IMPRESSION]
    if not impressions:
        return
    labels = labels_of_history(settings, [JoinInput(kind, r) for _, kind, r in ordered], history_end_ms=history_end_ms)
    labeled = [(key, r) for key, r in impressions if r["impression_id"] in labels]
    if not labeled:
        return
    y = np.array([labels[r["impression_id"]] for _, r in labeled])
    data = history_dataset(settings, record, [r for _, r in labeled], y)
    features = data.global_features
    for row, (key, _) in enumerate(labeled):
        entities = {
            name: (str(effect.entity_ids[row]), effect.features[row]) for name, effect in data.random_effects.items()
        }
        span = slice(features.indptr[row], features.indptr[row + 1])
        yield key, (float(y[row]), features.indices[span], features.data[span], entities)


def _history_chunk(items: Iterator[tuple[int, tuple[int, tuple]]]) -> Iterator[bytes]:
    """One chunk of ranked history rows as the global coordinate's columns (``.npz``)."""
    rows = sorted((rank, row) for _, (rank, row) in items)
    if not rows:
        return
    labels = np.array([row[0] for _, row in rows])
    lengths = np.array([len(row[1]) for _, row in rows], dtype=np.int64)
    indices = np.concatenate([row[1] for _, row in rows]).astype(np.int32)
    values = np.concatenate([row[2] for _, row in rows]).astype(np.float64)
    n = len(rows)
    batch = RowBatch(
        labels, np.ones(n), np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64), lengths, indices, values
    )
    yield pack_columns(chunk_columns(batch))


def _fit_entities(
    items: Iterator[tuple[str, tuple[int, float, np.ndarray, float]]], spec: CoordinateSpec, loss: Loss
) -> Iterator[tuple[str, tuple]]:
    """Every entity whose rows this partition holds, fitted by the compiled solver; then each row's score."""
    rows = sorted((rank, label, features, offset, entity) for entity, (rank, label, features, offset) in items)
    if not rows:
        return
    ranks = np.array([r[0] for r in rows], dtype=np.int64)
    data = RandomEffectData(entity_ids=np.array([r[4] for r in rows]), features=np.stack([r[2] for r in rows]))
    labels, offsets = np.array([r[1] for r in rows]), np.array([r[3] for r in rows])
    effect = fit_random_effect(data, labels, np.ones(len(rows)), offsets, spec, loss)
    yield "model", (effect.entity_ids, effect.means, effect.precisions)
    yield "scores", (ranks, effect.score(data))


class SparkHistory(HistoryRows):
    """Ranked labeled history rows on Spark executors (see :func:`spark_bootstrap_model`)."""

    def __init__(self, settings: Settings, ranked: Any, chunks: SparkExamples) -> None:
        self.settings = settings
        self.ranked = ranked
        self.chunks = chunks
        self.rows = chunks.rows
        self._scores: dict[str, Any] = {}
        self._cached = [ranked, chunks.chunks]

    @classmethod
    def of(cls, settings: Settings, record: Mapping[str, Any], events: Any, history_end_ms: int) -> SparkHistory:
        """Label ``events`` (keyed by impression id) by groups, rank the labeled rows, cut them into chunks.

        ``history_end_ms``: the newest event time of all ``events``, where every group's last windows close.
        """
        from pyspark import StorageLevel

        context = events.context
        partitions = max(2, context.defaultParallelism)
        labeled = events.partitionBy(partitions).mapPartitions(
            lambda items: _labeled_rows(items, settings, record, history_end_ms)
        )
        ranked = (
            labeled.sortByKey(numPartitions=partitions)
            .zipWithIndex()
            .map(lambda item: (item[1], item[0][1]))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        rows = ranked.count()
        chunk_rows = settings.refit.chunk_rows
        chunks = (
            ranked.map(lambda item: (item[0] // chunk_rows, item))
            .partitionBy(max(1, math.ceil(rows / chunk_rows)), lambda chunk: chunk)
            .mapPartitions(_history_chunk, preservesPartitioning=True)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        chunks.count()
        dim = len(record["features"])
        return cls(settings, ranked, SparkExamples(chunks, dim, rows))

    def global_split(self) -> ExampleSplit:
        """The cached chunks."""
        return self.chunks

    def fit_coordinate(
        self, name: str, spec: CoordinateSpec, loss: Loss, beta: np.ndarray, fitted: Mapping[str, RandomEffectModel]
    ) -> RandomEffectModel:
        """Rows grouped by entity, each group's entities solved on its executor around the others' margins."""
        from pyspark import StorageLevel

        chunk_rows, dim = self.settings.refit.chunk_rows, self.chunks.dim
        partitions = self.ranked.getNumPartitions()

        def margins(index: int, raws: Iterator[bytes]) -> Iterator[tuple[int, float]]:
            for raw in raws:
                b = block_of(unpack_columns(raw), dim)
                yield from zip(
                    range(index * chunk_rows, index * chunk_rows + len(b.labels)), b.offsets + b.features @ beta
                )

        offsets = self.chunks.chunks.mapPartitionsWithIndex(margins)
        for other in fitted:  # in coordinate order, as the local engine adds them
            offsets = offsets.join(self._scores[other], partitions).mapValues(lambda pair: pair[0] + pair[1])
        rows = self.ranked.mapValues(lambda row: (row[0], *row[3][name])).join(offsets, partitions)
        by_entity = rows.map(lambda item: (item[1][0][1], (item[0], item[1][0][0], item[1][0][2], item[1][1])))
        solved = (
            by_entity.partitionBy(partitions)
            .mapPartitions(lambda items: _fit_entities(items, spec, loss))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        self._cached.append(solved)
        models = solved.filter(lambda item: item[0] == "model").values().collect()
        self._scores[name] = solved.filter(lambda item: item[0] == "scores").values().flatMap(lambda s: zip(*s))
        ids = np.concatenate([m[0] for m in models]) if models else np.zeros(0, dtype=str)
        order = np.argsort(ids, kind="stable")
        width = self.settings.model.coordinates[name].max_features
        means = np.concatenate([m[1] for m in models]) if models else np.zeros((0, width))
        precisions = np.concatenate([m[2] for m in models]) if models else np.zeros((0, width))
        return RandomEffectModel(ids[order], means[order], precisions[order])

    def release(self) -> None:
        """Drop what this history cached on the executors."""
        for rdd in self._cached:
            rdd.unpersist()
