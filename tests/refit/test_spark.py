"""The refit and the bootstrap on Spark (local[2]) give what the local engine gives, from the same files.

One Spark session serves the module (starting a JVM costs seconds). Nothing here talks
to Kafka: the refit runs as a backtest runs it (``run_from`` with a publish callback), so
the comparison is of the engines alone.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from stream.archive.files import ArchiveFiles, hour_of
from stream.event_log import EventLog
from stream.config import load_settings
from stream.model.export import initial_global_model_record
from stream.model.game import global_partial
from stream.model.losses import get_loss
from stream.refit.bootstrap import bootstrap_model
from stream.refit.examples import TREE_FANOUT, MemoryExamples, RowBatch, pack_columns
from stream.refit.job import GlobalRefit
from stream.refit.spark import SparkExamples, spark_bootstrap_model
from stream.synthetic import World, WorldSpec, event_stream, labeled_impressions
from stream.synthetic.examples import joined_examples
from stream.synthetic.sinks import write_avro_files
from stream.tables.models import GlobalModelTable

pytestmark = pytest.mark.spark
FILE_RECORDS = 1700  # several archive files per hour, so chunks are cut across file boundaries


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # the tests' JVM talks to itself only
    session = (
        SparkSession.builder.master("local[2]")
        .appName("glmix-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _settings(tmp_path, engine, chunk_rows, max_iterations):
    return load_settings(overrides={
        "state_dir": str(tmp_path / engine), "archive.path": str(tmp_path / "archive"), "refit.holdout_fraction": "0.25",
        "refit.chunk_rows": str(chunk_rows), "refit.max_iterations": str(max_iterations), "refit.engine": engine,
    })


def _archive(settings, requests, first_index_from=24):
    """A world's joined examples in several archive files, and the model whose index saw its first impressions only."""
    world = World(WorldSpec(seed=11, members=120, jobs=60, requests=requests))
    labeled = labeled_impressions(world)
    record = initial_global_model_record([li.impression for li in labeled[:first_index_from]], settings.model)
    table = GlobalModelTable(settings.model)
    table.apply([record])
    examples = joined_examples(labeled, table.current, settings.model)
    files = ArchiveFiles(settings.archive_path)
    for start in range(0, len(examples), FILE_RECORDS):
        part = examples[start : start + FILE_RECORDS]
        for hour in sorted({hour_of(e["event_time"]) for e in part}):
            files.write(hour, 0, start, start + len(part) - 1, [e for e in part if hour_of(e["event_time"]) == hour])
    return table.current


# Every L-BFGS evaluation is one Spark job (about a second on a busy 2-core machine): the default suite fits a small
# window for a few iterations; the slow suite a larger one further.
@pytest.mark.parametrize("requests, max_iterations", [(1200, 8), pytest.param(3000, 30, marks=pytest.mark.slow)])
def test_the_spark_refit_fits_gates_and_grows_as_the_local_refit_does(spark, tmp_path, requests, max_iterations):
    results, published = {}, {}
    chunk_rows = requests * 5 // 6  # about 4 training chunks, cut across archive files
    for engine in ("local", "spark"):
        settings = _settings(tmp_path, engine, chunk_rows, max_iterations)
        model = _archive(settings, requests) if engine == "local" else model
        published[engine] = []
        refit = GlobalRefit(settings, publish=published[engine].append)
        results[engine] = refit.run_from(model)
    local, remote = results["local"], results["spark"]
    assert local.status == "published" and local.index_version == 2 and local.admitted_features["global"] > 0, local
    assert local.train_examples > 3 * chunk_rows
    for key in ("status", "gate", "candidate", "step", "train_examples", "holdout_examples", "dropped_examples",
                "admitted_features", "version", "index_version"):
        assert getattr(remote, key) == getattr(local, key), key
    [mine], [theirs] = published["local"], published["spark"]
    assert theirs["features"] == mine["features"] and theirs["coordinate_indices"] == mine["coordinate_indices"]
    a, b = np.array(mine["coefficients"]), np.array(theirs["coefficients"])
    assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max(), np.abs(a - b).max()
    for name, metrics in local.candidates.items():
        assert remote.candidates[name] == pytest.approx(metrics, rel=1e-9), name


def test_partials_of_many_chunks_are_added_in_groups_on_executors_in_the_order_the_local_engine_adds_them(spark):
    rng = np.random.default_rng(5)
    n, dim = 40 * (TREE_FANOUT + 5), 30
    lengths = rng.integers(1, 6, size=n)
    rows = RowBatch(rng.integers(0, 2, n).astype(float), rng.lognormal(size=n), rng.normal(size=n), np.zeros(n),
                    np.zeros(n, dtype=np.int64), lengths, rng.integers(0, dim, lengths.sum()).astype(np.int32),
                    rng.normal(size=lengths.sum()).astype(np.float32))
    local = MemoryExamples.of(rows, dim, chunk_rows=40)  # more chunks than TREE_FANOUT: two groups and a rest
    chunks = spark.sparkContext.parallelize(list(enumerate(map(pack_columns, local.chunks))), 4)
    remote = SparkExamples(chunks.partitionBy(len(local.chunks), lambda k: k).values(), dim, local.rows)
    beta = rng.normal(size=dim)
    partial = lambda block: global_partial(block, beta, get_loss("logistic"))  # noqa: E731
    assert np.array_equal(remote.summed_blocks(partial), local.summed_blocks(partial))  # bit for bit
    assert np.array_equal(remote.margins(beta), local.margins(beta))


# The small world failed before each partition's last windows closed at the history's end: one of its two
# partitions of impression ids ended 56 s before the history and lost 68 of 1,250 labels.
@pytest.mark.parametrize("requests, members, jobs", [(250, 40, 60), pytest.param(700, 80, 150, marks=pytest.mark.slow)])
def test_the_spark_bootstrap_fits_the_global_model_and_random_effects_the_local_bootstrap_fits(spark, tmp_path, requests,
                                                                                               members, jobs):
    world = World(WorldSpec(seed=6, members=members, jobs=jobs, requests=requests, mean_request_gap_ms=200,
                            attribution_window_ms=60_000))  # duplicates, late and out-of-order events included
    write_avro_files(event_stream(world), tmp_path)
    paths = [tmp_path / "impressions.avro", tmp_path / "interactions.avro"]
    settings = load_settings(overrides={"joiner.attribution_window_ms": "60000", "joiner.allowed_lateness_ms": "60000",
                                        "refit.chunk_rows": str(requests * 2), "refit.engine": "spark"})
    history = EventLog.from_paths(paths)
    local = bootstrap_model(settings, history.events)
    remote, read = spark_bootstrap_model(settings, paths)
    assert read == {"events": len(history), "invalid_events": history.invalid}
    assert remote.record["features"] == local.record["features"]
    assert remote.record["coordinate_indices"] == local.record["coordinate_indices"]
    a, b = np.array(local.record["coefficients"]), np.array(remote.record["coefficients"])
    assert np.abs(a).max() > 0.1 and np.abs(a - b).max() <= 1e-6 * np.abs(a).max()
    assert set(local.random_effects) == {"member", "job"} == set(remote.random_effects)
    for name, effect in local.random_effects.items():
        other = remote.random_effects[name]
        assert len(effect.entity_ids) > min(members, jobs) / 2 and np.array_equal(other.entity_ids, effect.entity_ids)
        assert np.abs(effect.means).max() > 0.1
        np.testing.assert_allclose(other.means, effect.means, rtol=1e-6, atol=1e-9 * np.abs(effect.means).max())
        np.testing.assert_allclose(other.precisions, effect.precisions, rtol=1e-6)


def test_the_spark_engine_refuses_what_it_cannot_read_in_one_line(tmp_path, capsys):
    from stream.cli import main

    assert main(["bootstrap", "--engine", "spark", "--from-topics", "--since", "0", "--no-publish"]) == 2
    assert "--from-topics" in capsys.readouterr().err
