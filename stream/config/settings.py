"""The one typed configuration object of glmix-stream.

Settings are frozen dataclasses built once at start-up by :func:`load_settings` from, in
increasing precedence: built-in defaults, a TOML file, ``GLMIX_...`` environment
variables, and ``--set key=value`` command-line overrides. Every value is checked while
it is built; an unknown key or a bad value raises :class:`ConfigError` naming the key.
Nothing else in the package reads the environment.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stream.config.exceptions import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

Loss = Literal["logistic", "linear", "poisson"]
PriorKind = Literal["l2", "bayes"]
PrecisionKind = Literal["full", "diagonal"]
UnseenFeaturePolicy = Literal["admit", "drop"]
ClientValue = str | int | float | bool
TableKind = Literal["memory", "rocksdb"]
InputLoss = Literal["skip", "stop"]

ENV_PREFIX = "GLMIX_"

SEGMENT_FIELDS = ("member_id", "item_id", "random_bucket", "position")


def is_segment_field(field: str) -> bool:
    """Whether labeled examples can be grouped by ``field``: a segment field, or ``context:<key>``."""
    return field in SEGMENT_FIELDS or (field.startswith("context:") and len(field) > len("context:"))


MEMBER_BAGS = ("member_title", "member_skills", "member_seniority", "member_location")
JOB_BAGS = ("job_title", "job_skills", "job_company", "job_seniority")


def _check(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise ConfigError(key, problem)


def _check_positive(value: float, key: str) -> None:
    _check(math.isfinite(value) and value > 0, key, f"must be a finite number > 0, got {value!r}")


def _check_non_negative(value: float, key: str) -> None:
    _check(math.isfinite(value) and value >= 0, key, f"must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class TopicSettings:
    """Kafka topic names (DESIGN §3) and how to create them where CreateTopics works."""

    impressions: str = "glmix.impressions"
    interactions: str = "glmix.interactions"
    examples_by_member: str = "glmix.examples.by-member"
    examples_by_job: str = "glmix.examples.by-job"
    examples_prefix: str = "glmix.examples.by-"
    coefficients_prefix: str = "glmix.coefficients."
    model_global: str = "glmix.model.global"
    dead_letter: str = "glmix.dead-letter"
    score_requests: str = "glmix.score-requests"
    score_results: str = "glmix.score-results"
    items: str = "glmix.items"
    partitions: int = 4
    replication_factor: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                _check(bool(value.strip()), f.name, "topic name must not be empty")
        _check(self.partitions >= 1, "partitions", f"must be >= 1, got {self.partitions}")
        _check(self.replication_factor >= 1, "replication_factor", f"must be >= 1, got {self.replication_factor}")

    def examples(self, coordinate: str, entity_field: str) -> str:
        """The topic of labeled examples keyed by the entity of ``coordinate``."""
        if entity_field == "member_id":
            return self.examples_by_member
        if entity_field == "item_id":
            return self.examples_by_job
        return f"{self.examples_prefix}{coordinate}"

    def coefficients(self, coordinate: str) -> str:
        """The compacted topic that carries one random-effect coordinate's coefficients."""
        return f"{self.coefficients_prefix}{coordinate}"


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach Kafka. Client maps pass to librdkafka unchanged (SASL/SSL included).

    An empty ``bootstrap_servers`` means the embedded librdkafka mock cluster. Consumer
    groups are named ``<group_prefix>-joiner`` and ``<group_prefix>-updater-<coordinate>``,
    so two pipelines can share a cluster. ``client``
    applies to every client; ``producer``, ``consumer`` and ``admin`` to one kind only.
    ``input_loss`` is what a stage does when records of an input were deleted (by
    retention) before it read them: ``skip`` counts them (``glmix_input_records_skipped_total``)
    and goes on from what is left; ``stop`` ends the stage with one line before it processes
    anything past the loss, and so again at every restart until the setting is ``skip``.
    """

    bootstrap_servers: str = ""
    schema_registry_url: str = ""
    group_prefix: str = "glmix"
    client: Mapping[str, ClientValue] = field(default_factory=dict)
    producer: Mapping[str, ClientValue] = field(default_factory=dict)
    consumer: Mapping[str, ClientValue] = field(default_factory=dict)
    admin: Mapping[str, ClientValue] = field(default_factory=dict)
    schema_registry: Mapping[str, ClientValue] = field(default_factory=dict)
    input_loss: InputLoss = "skip"

    def __post_init__(self) -> None:
        _check(bool(self.group_prefix.strip()), "group_prefix", "must not be empty")

    def group_id(self, stage: str) -> str:
        """The consumer group of a pipeline stage (``joiner``, ``updater-member``, ...)."""
        return f"{self.group_prefix}-{stage}"

    def changelog_topic(self, stage: str) -> str:
        """The compacted changelog of a stateful stage's stores: it belongs to the stage's consumer group."""
        return f"{self.group_id(stage)}-changelog"


@dataclass(frozen=True)
class CoordinateSettings:
    """One random-effect coordinate: whose effect it is, over which features, and its prior.

    ``entity_field`` names the impression field that identifies the entity (``member_id``,
    ``item_id``) or a context key as ``context:<key>``. The per-entity objective is
    ``sum_k w_k loss_k + 1/2 (theta - mu0)' Lambda0 (theta - mu0)`` where, for a new entity,
    ``Lambda0 = diag(l2, ..., l2, intercept_l2)``: the intercept's penalty is its own
    setting, never hidden. With ``prior = "bayes"``, later updates use
    ``Lambda0 = forgetting * P + (1 - forgetting) * Lambda_new`` (DESIGN §4).
    ``max_features`` bounds the coordinate's feature index (intercept included); with
    ``unseen_features = "admit"`` the refit's vocabulary step may append features to it
    up to that bound, with ``drop`` the index stays as bootstrapped.
    With ``prior = "l2"`` each update refits the entity's last ``window_events`` events
    (younger than ``window_max_age_ms`` when that is > 0) around a zero mean. The
    updater reads micro-batches of at most ``batch_size`` examples or ``batch_time_ms``.
    """

    entity_field: str
    feature_bags: tuple[str, ...]
    max_features: int = 32
    unseen_features: UnseenFeaturePolicy = "admit"
    intercept: bool = True
    prior: PriorKind = "bayes"
    precision: PrecisionKind = "full"
    l2: float = 1.0
    intercept_l2: float = 1.0
    forgetting: float = 1.0
    newton_steps: int = 10
    gradient_tolerance: float = 1e-6
    window_events: int = 64
    window_max_age_ms: int = 0
    batch_size: int = 2000
    batch_time_ms: int = 200

    def __post_init__(self) -> None:
        ok_field = self.entity_field in ("member_id", "item_id") or (
            self.entity_field.startswith("context:") and len(self.entity_field) > len("context:")
        )
        _check(ok_field, "entity_field", f"must be member_id, item_id or context:<key>, got {self.entity_field!r}")
        _check(len(self.feature_bags) > 0, "feature_bags", "must name at least one feature bag")
        _check(self.max_features >= 1, "max_features", f"must be >= 1, got {self.max_features}")
        _check(
            not self.intercept or self.max_features >= 2,
            "max_features",
            "must be >= 2 when intercept = true (the intercept takes one column)",
        )
        _check_non_negative(self.l2, "l2")
        _check_non_negative(self.intercept_l2, "intercept_l2")
        _check(0 < self.forgetting <= 1, "forgetting", f"must be in (0, 1], got {self.forgetting}")
        _check(self.newton_steps >= 1, "newton_steps", f"must be >= 1, got {self.newton_steps}")
        _check_positive(self.gradient_tolerance, "gradient_tolerance")
        _check(self.window_events >= 1, "window_events", f"must be >= 1, got {self.window_events}")
        _check(
            self.window_max_age_ms >= 0,
            "window_max_age_ms",
            f"must be >= 0 (0: no age limit), got {self.window_max_age_ms}",
        )
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.batch_time_ms >= 1, "batch_time_ms", f"must be >= 1, got {self.batch_time_ms}")


def default_coordinates() -> dict[str, CoordinateSettings]:
    """GLMix's two classic coordinates: per-member over job features, per-job over member features.

    Their penalties are what ``glmix tune`` chose on the synthetic worlds (README,
    "Tuning"): member l2 = 3, job l2 = 10 gained 0.009-0.019 evaluation AUC over l2 = 1;
    a job's effect is learned from fewer, noisier events than a member's.
    """
    return {
        "member": CoordinateSettings(entity_field="member_id", feature_bags=JOB_BAGS, l2=3.0),
        "job": CoordinateSettings(entity_field="item_id", feature_bags=MEMBER_BAGS, l2=10.0),
    }


TransformKind = Literal["log", "indicator", "bucketize", "spline", "product"]


@dataclass(frozen=True)
class TransformSettings:
    """One feature transform of the feed relevance toolbox, applied on every path (DESIGN §8).

    The table key names the feature: for ``log`` (``log1p`` of a count), ``indicator``
    (1 when the value is > 0), ``bucketize`` (the term becomes the bucket ``[lo,hi)`` of
    ``boundaries``, value 1) and ``spline`` (linear interpolation between the two
    neighbouring ``boundaries``, one term per knot) it is the input feature name, in any bag.
    For ``product`` it is the name of the new feature: the product of the two ``inputs``
    feature names, written into bag ``bag``.
    """

    kind: TransformKind
    boundaries: tuple[float, ...] = ()
    inputs: tuple[str, ...] = ()
    bag: str = ""

    def __post_init__(self) -> None:
        increasing = all(a < b for a, b in zip(self.boundaries, self.boundaries[1:]))
        if self.kind in ("bucketize", "spline"):
            least = 1 if self.kind == "bucketize" else 2
            _check(
                len(self.boundaries) >= least and increasing,
                "boundaries",
                f"{self.kind} needs >= {least} strictly increasing boundaries, got {list(self.boundaries)}",
            )
        else:
            _check(not self.boundaries, "boundaries", f"{self.kind} takes no boundaries")
        if self.kind == "product":
            _check(len(self.inputs) == 2, "inputs", f"product multiplies two feature names, got {list(self.inputs)}")
            _check(bool(self.bag), "bag", "product needs the bag its feature goes into")
        else:
            _check(not self.inputs and not self.bag, "inputs", f"{self.kind} transforms the feature it is keyed by")


@dataclass(frozen=True)
class ModelSettings:
    """The GLMix model spec: link/loss, the global coordinate, the random-effect coordinates, feature transforms."""

    loss: Loss = "logistic"
    global_feature_bags: tuple[str, ...] = MEMBER_BAGS + JOB_BAGS
    global_l2: float = 1.0
    coordinates: Mapping[str, CoordinateSettings] = field(default_factory=default_coordinates)
    transforms: Mapping[str, TransformSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_non_negative(self.global_l2, "global_l2")
        _check(len(self.global_feature_bags) > 0, "global_feature_bags", "must name at least one feature bag")
        for name in self.coordinates:
            _check(
                name.replace("_", "").replace("-", "").isalnum() and name != "global",
                f"coordinates.{name}",
                "coordinate names are letters, digits, '-' and '_', and 'global' is reserved",
            )


def default_labels() -> dict[str, float]:
    """Interaction types that make an impression positive, with the label each gives."""
    return {"CLICK": 1.0, "APPLY": 1.0}


@dataclass(frozen=True)
class JoinerSettings:
    """How impressions and interactions become labeled examples (DESIGN §2).

    An interaction counts when its event time is within ``attribution_window_ms`` after
    the impression's. The watermark is the largest event time seen minus
    ``allowed_lateness_ms``; an impression's window closes when the watermark passes its
    end. ``labels`` maps interaction types to labels (the highest arrived wins; none
    means 0); an impression is emitted when its window closes — or, with
    ``early_positives``, as soon as an interaction with the highest label arrives. Early
    positives make clicks count within a batch, but each entity then sees its positives a
    window before its negatives (the delayed-feedback bias): on the end-to-end test it
    cost 0.05 progressive AUC, so it is off by default. The watermark follows the slower of the two
    inputs of a partition, unless that input has been idle (nothing new, nothing left to
    read) for ``idle_input_ms``. An emitted impression is remembered for
    ``emitted_retention_ms`` after its event time, to drop its duplicates and count its late
    interactions; an interaction for an impression older than that is an orphan. With ``bootstrap_model`` and no published
    global model (``glmix bootstrap`` publishes one from history), the joiner reads a
    warm-up of ``bootstrap_impressions`` impressions (or what ``bootstrap_wait_ms``
    brought), builds the first feature indexes from them, publishes a zero global model
    and then processes the warm-up like any input, so a fresh deployment can start; the
    refit's vocabulary step grows the indexes from there.
    """

    attribution_window_ms: int = 15 * 60 * 1000
    allowed_lateness_ms: int = 60 * 1000
    labels: Mapping[str, float] = field(default_factory=default_labels)
    batch_size: int = 5000
    batch_time_ms: int = 100
    idle_input_ms: int = 10_000
    emitted_retention_ms: int = 60 * 60 * 1000
    early_positives: bool = False
    bootstrap_model: bool = True
    bootstrap_impressions: int = 5000
    bootstrap_wait_ms: int = 60_000

    def __post_init__(self) -> None:
        _check(
            self.attribution_window_ms >= 1, "attribution_window_ms", f"must be >= 1, got {self.attribution_window_ms}"
        )
        _check(self.allowed_lateness_ms >= 0, "allowed_lateness_ms", f"must be >= 0, got {self.allowed_lateness_ms}")
        _check(len(self.labels) > 0, "labels", "must name at least one interaction type")
        for kind, label in self.labels.items():
            _check(math.isfinite(label), f"labels.{kind}", f"must be finite, got {label!r}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.batch_time_ms >= 1, "batch_time_ms", f"must be >= 1, got {self.batch_time_ms}")
        _check(self.idle_input_ms >= 0, "idle_input_ms", f"must be >= 0, got {self.idle_input_ms}")
        _check(
            self.bootstrap_impressions >= 1, "bootstrap_impressions", f"must be >= 1, got {self.bootstrap_impressions}"
        )
        _check(self.bootstrap_wait_ms >= 0, "bootstrap_wait_ms", f"must be >= 0, got {self.bootstrap_wait_ms}")
        _check(
            self.emitted_retention_ms >= self.attribution_window_ms,
            "emitted_retention_ms",
            f"must be >= attribution_window_ms ({self.attribution_window_ms}), got {self.emitted_retention_ms}",
        )


@dataclass(frozen=True)
class ServingSettings:
    """The scoring HTTP service (``glmix serve``): where it listens and what one request may ask.

    ``exploration`` keeps every entity's posterior precision so requests may ask for
    Thompson sampling or UCB (d(d+1)/2 doubles per entity with full precisions). ``table``
    says where the coefficient tables of the scorer and the joiner live: ``memory`` (every
    entity in RAM), or ``rocksdb`` (every entity on local disk under ``state_dir``, the
    ``cache_entities`` most recently used in RAM) for coordinates larger than memory.
    ``workers`` scoring processes share the port (:mod:`stream.scoring.workers`): one per core.
    """

    host: str = "0.0.0.0"
    port: int = 8080
    max_candidates: int = 1000
    max_features_per_bag: int = 1000
    max_body_bytes: int = 4 * 1024 * 1024
    refresh_ms: int = 100
    exploration: bool = False
    table: TableKind = "memory"
    cache_entities: int = 100_000
    workers: int = 1

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "port", f"must be a TCP port, got {self.port}")
        for name in (
            "max_candidates",
            "max_features_per_bag",
            "max_body_bytes",
            "refresh_ms",
            "cache_entities",
            "workers",
        ):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ArchiveSettings:
    """Where ``glmix run archive`` keeps labeled examples for the refit and offline evaluation.

    ``path`` is a local directory or any fsspec URL (``s3://bucket/prefix`` with s3fs
    installed); empty means ``<state_dir>/archive``. Files are hourly by event time, ``dt=YYYY-MM-DD/hour=HH/``; a file is
    written whole (``roll_records`` examples or ``roll_interval_ms`` of buffering,
    whichever comes first) and named by its partition and offset range, so a restart
    never duplicates an example. Hours older than ``retention_hours`` before the newest
    archived hour are deleted (0 keeps everything).
    """

    path: str = ""
    roll_records: int = 50_000
    roll_interval_ms: int = 60_000
    retention_hours: int = 7 * 24
    batch_size: int = 5000
    batch_time_ms: int = 200

    def __post_init__(self) -> None:
        for name in ("roll_records", "roll_interval_ms", "batch_size", "batch_time_ms"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _check(
            self.retention_hours >= 0,
            "retention_hours",
            f"must be >= 0 (0 keeps everything), got {self.retention_hours}",
        )


GateMetric = Literal["auc", "log_loss"]
RefitOffsets = Literal["current", "join_time"]
RefitCandidates = Literal["residual", "standalone", "both"]
TrainingExamples = Literal["all", "random_bucket"]
RefitEngine = Literal["local", "spark"]


@dataclass(frozen=True)
class RefitSettings:
    """The periodic global refit (``glmix refit``): data window, holdout, gate and outputs.

    The refit trains on the archived examples of the last ``window_hours`` (ending at the
    newest archived example) except the final ``holdout_fraction`` of that time, which it
    scores with the current and the new model. The new model is published only when its
    ``gate_metric`` is not worse than the current one's by more than ``gate_tolerance``.
    Training ``offsets`` are the random effects' scores the global coordinate is fitted
    around: those each example recorded at ``join_time`` (the default), or the ``current``
    coefficients (batch GAME coordinate descent). Current coefficients have already
    absorbed the training examples, so the global coordinate sees shrunken residuals: on
    the end-to-end test that refit lost 0.003 holdout AUC and was refused by the gate,
    while join-time offsets gained. The holdout always uses join-time scores: the current
    coefficients have already learned from the holdout, and a model is only ever served
    with random effects that have not seen the request. Data is streamed into
    ``chunk_rows`` chunks spilled to disk, so memory stays bounded by the chunk size and
    the model. Model files go to ``output_dir`` (empty: ``<state_dir>/models``).

    The refit is also the one writer of the feature indexes (DESIGN §1): with
    ``grow_vocabulary`` it admits, per coordinate whose ``unseen_features`` is ``admit``
    (and the global coordinate with ``grow_global_vocabulary``), the features its index
    could not place that the training window saw at least ``vocabulary_min_count``
    times, most frequent first, up to the coordinate's ``max_features``; the next index
    version keeps every column in place and is published even when the coefficients are
    refused (status ``grown``).

    ``candidates`` are the global fits a run compares: ``residual`` fits the global
    coordinate around the random effects' scores (``offsets``; GAME's coordinate step),
    ``standalone`` around the examples' own offsets alone (a population model, what
    serves a member or job the random effects do not know yet), ``both`` (the default)
    fits the two. The gate judges every candidate on the holdout twice, as the full
    model and as the global model alone; a candidate passes when neither view is worse
    than the current model's, and the passing candidate with the best full-model metric
    is published. (Measured by backtest in the README, "Global refit".)

    ``training_examples = "random_bucket"`` trains the global coordinate on the examples
    whose ranking was randomized only (free of the serving model's position and
    selection bias, as feed relevance teams train); the holdout keeps every example, the
    traffic the model will serve.

    ``negative_sample_rate`` below 1 keeps that fraction of the training window's
    negatives (label 0), chosen by a hash of the example id so every run and engine keeps
    the same ones, each kept negative weighted ``1 / rate`` (an importance weight: the
    fitted model stays calibrated); the holdout keeps every example.

    ``engine`` says where the refit (and ``glmix bootstrap``) reads and fits: ``local``,
    in this process over spilled chunks, or ``spark``, on Spark executors
    (:mod:`stream.refit.spark`; needs the ``spark`` extra and Java), with the same result.
    ``spark_master`` is the master URL (``local[4]``, ``spark://host:7077``, ``yarn``);
    empty means the one ``spark-submit`` gives, else ``local[*]``. ``[refit.spark]`` passes
    Spark properties (``"spark.executor.memory" = "8g"``) to the session unchanged.
    """

    window_hours: float = 24.0
    holdout_fraction: float = 0.1
    gate_metric: GateMetric = "auc"
    gate_tolerance: float = 0.002
    offsets: RefitOffsets = "join_time"
    max_iterations: int = 200
    chunk_rows: int = 200_000
    min_examples: int = 100
    output_dir: str = ""
    model_name: str = "glmix"
    grow_vocabulary: bool = True
    grow_global_vocabulary: bool = True
    vocabulary_min_count: int = 5
    training_examples: TrainingExamples = "all"
    candidates: RefitCandidates = "both"
    negative_sample_rate: float = 1.0
    engine: RefitEngine = "local"
    spark_master: str = ""
    spark: Mapping[str, ClientValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_positive(self.window_hours, "window_hours")
        _check(
            0 < self.negative_sample_rate <= 1,
            "negative_sample_rate",
            f"must be in (0, 1] (1 keeps every negative), got {self.negative_sample_rate}",
        )
        _check(
            not (self.engine == "spark" and self.offsets == "current"),
            "engine",
            "the spark engine fits around join-time offsets (refit.offsets = join_time); current offsets need "
            "every coefficient table in one process",
        )
        for key in self.spark:
            _check(key.startswith("spark."), f"spark.{key}", "Spark properties start with 'spark.'")
        _check(0 < self.holdout_fraction < 1, "holdout_fraction", f"must be in (0, 1), got {self.holdout_fraction}")
        _check_non_negative(self.gate_tolerance, "gate_tolerance")
        for name in ("max_iterations", "chunk_rows", "min_examples", "vocabulary_min_count"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _check(bool(self.model_name.strip()), "model_name", "must not be empty")


@dataclass(frozen=True)
class GameInputSettings:
    """How Photon-ML GAME input records map onto the model (``glmix train``, ``bootstrap``, ``score``, ``backtest``).

    GAME input is any Avro record schema with name–term–value bags (arrays of records
    with ``name``, ``term`` and ``value``), a response, optional weight, offset and uid,
    and entity ids at top level or in a map of strings. The field names default to
    Photon-ML's own (``InputColumnsNames``): ``response``, ``weight``, ``offset``,
    ``uid``, ``metadataMap``. Which bags feed which coordinate is the model's own
    ``model.global_feature_bags`` and ``model.coordinates.<name>.feature_bags``, the same
    keys the stream scores with; ``bags`` says which record field holds a model bag
    (``bags.member_skills = "userFeatures"``; default: the field of the bag's own name).
    ``ids`` names the field holding a coordinate's entity id, looked up at top level
    first, then as a key of the ``metadata_map`` field, as Photon-ML looks up a random-effect
    type (default: the coordinate's ``entity_field``, or its key for ``context:<key>``).
    ``event_time`` names the field (top level or map key) with each record's event time in
    epoch milliseconds, which ``glmix backtest`` and ``glmix tune`` replay by; empty: none.
    """

    response: str = "response"
    weight: str = "weight"
    offset: str = "offset"
    uid: str = "uid"
    metadata_map: str = "metadataMap"
    event_time: str = ""
    bags: Mapping[str, str] = field(default_factory=dict)
    ids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("response", "weight", "offset", "uid", "metadata_map"):
            _check(bool(getattr(self, name).strip()), name, "must name a field")
        for table in ("bags", "ids"):
            for key, value in getattr(self, table).items():
                _check(bool(value.strip()), f"{table}.{key}", "must name a field")

    def bag_field(self, bag: str) -> str:
        """The record field that holds model bag ``bag``."""
        return self.bags.get(bag, bag)

    def id_field(self, coordinate: str, settings: CoordinateSettings) -> str:
        """The record field (or map key) that holds ``coordinate``'s entity id."""
        return self.ids.get(coordinate, settings.entity_field.removeprefix("context:"))


@dataclass(frozen=True)
class MetricsSettings:
    """``/metrics`` of pipeline processes (``glmix run``, ``glmix refit --every``, the demo).

    ``port`` 0 picks a free port (the demo prints it). ``kafka_statistics_interval_ms`` is
    how often librdkafka reports consumer lag, retention headroom and rebalances. With ``segment_by`` (an
    example field: ``member_id``, ``item_id``, ``random_bucket``, ``position`` or
    ``context:<key>``, e.g. ``context:activity_type``) the live quality metrics also give
    observed/expected per value of that field: the ``segment_values`` most frequent in the
    window, the rest as ``(other)``, so the label set stays bounded. ``history_edges``
    cut every quality report (live, ``glmix evaluate progressive``, ``glmix backtest``)
    by entity history: with ``(1, 5, 20)``, an entity with 0, 1-4, 5-19 or 20+ earlier
    examples.
    """

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 9108
    kafka_statistics_interval_ms: int = 5000
    segment_by: str = ""
    segment_values: int = 20
    history_edges: tuple[int, ...] = (1, 5, 20)

    def __post_init__(self) -> None:
        _check(
            len(self.history_edges) > 0
            and self.history_edges[0] >= 1
            and all(a < b for a, b in zip(self.history_edges, self.history_edges[1:])),
            "history_edges",
            f"must be increasing counts >= 1, got {list(self.history_edges)}",
        )
        _check(
            not self.segment_by or is_segment_field(self.segment_by),
            "segment_by",
            f"must be one of {', '.join(SEGMENT_FIELDS)} or context:<key>, got {self.segment_by!r}",
        )
        _check(self.segment_values >= 1, "segment_values", f"must be >= 1, got {self.segment_values}")
        _check(0 <= self.port <= 65535, "port", f"must be a TCP port (0: any free port), got {self.port}")
        _check(
            self.kafka_statistics_interval_ms >= 100,
            "kafka_statistics_interval_ms",
            f"must be >= 100, got {self.kafka_statistics_interval_ms}",
        )


@dataclass(frozen=True)
class Settings:
    """Everything a glmix process is configured with; built once, passed down.

    ``state_write_ahead_log = false`` writes the stages' RocksDB stores without the
    write-ahead log: cheaper state writes, and a process that crashes restores the
    partitions whose latest writes were still in memory from their changelogs, as after
    a move between machines (:mod:`stream.state.partition_store`).

    ``batching = "natural"`` (the default) lets every stage take whatever has arrived as
    soon as it is idle: a batch is what came in while the last one was processed, small
    (fresh) under light load and large under heavy load, and a stage with nothing to do
    waits at most its ``batch_time_ms`` for the first record. ``"fixed"`` waits for
    ``batch_size`` records or ``batch_time_ms``, whichever comes first, as releases before
    0.2 did.
    """

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    joiner: JoinerSettings = field(default_factory=JoinerSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    refit: RefitSettings = field(default_factory=RefitSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    game_input: GameInputSettings = field(default_factory=GameInputSettings)
    state_dir: str = "./state"
    state_write_ahead_log: bool = True
    restore_max_records_per_s: int = 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    batching: Literal["natural", "fixed"] = "natural"

    def __post_init__(self) -> None:
        bags = set(self.model.global_feature_bags).union(*(c.feature_bags for c in self.model.coordinates.values()))
        for bag in self.game_input.bags:
            _check(
                bag in bags,
                f"game_input.bags.{bag}",
                f"is not a bag of the model (its bags: {', '.join(sorted(bags))})",
            )
        for coordinate in self.game_input.ids:
            _check(
                coordinate in self.model.coordinates,
                f"game_input.ids.{coordinate}",
                f"is not a configured coordinate ({', '.join(self.model.coordinates)})",
            )
        _check(
            self.restore_max_records_per_s >= 0,
            "restore_max_records_per_s",
            f"must be >= 0 (0: unlimited), got {self.restore_max_records_per_s}",
        )

    @property
    def archive_path(self) -> str:
        """Where labeled examples are archived: ``archive.path``, or ``<state_dir>/archive``."""
        return self.archive.path or str(Path(self.state_dir) / "archive")

    @property
    def models_dir(self) -> str:
        """Where the refit writes model files: ``refit.output_dir``, or ``<state_dir>/models``."""
        return self.refit.output_dir or str(Path(self.state_dir) / "models")


# --------------------------------------------------------------------------- loading


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults < TOML file < ``GLMIX_*`` env < ``overrides``.

    ``env`` is the environment to read (pass ``os.environ``); ``overrides`` maps dotted keys
    (``kafka.bootstrap_servers``) to string values, as given by ``--set`` on the command line.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(Path(path))
    model = raw.setdefault("model", {})
    if isinstance(model, dict) and "coordinates" not in model:
        # A file that lists coordinates defines the whole set; otherwise the built-in
        # member and job coordinates are there for env and --set to adjust.
        model["coordinates"] = {name: {} for name in default_coordinates()}
    if env:
        _merge(raw, _env_overrides(env))
    for key, value in (overrides or {}).items():
        _merge(raw, _dotted_to_nested(key, value))
    return _build(Settings, raw, "")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("--config", f"file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``GLMIX_KAFKA__BOOTSTRAP_SERVERS`` -> ``kafka.bootstrap_servers``.

    Inside a librdkafka map (``GLMIX_KAFKA__CLIENT__SASL_MECHANISM``) single underscores
    become dots, since librdkafka property names are dotted.
    """
    nested: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) == 3 and tuple(parts[:2]) in _PASSTHROUGH_MAPS:
            parts[2] = parts[2].replace("_", ".")
        _merge(nested, _dotted_to_nested(".".join(parts), value, origin=name))
    return nested


_CLIENT_MAPS = {"client", "producer", "consumer", "admin", "schema_registry"}
# Maps whose keys are dotted property names passed on unchanged: librdkafka's, and Spark's ([refit.spark]).
_PASSTHROUGH_MAPS = {("kafka", name) for name in _CLIENT_MAPS} | {("refit", "spark")}


def _dotted_to_nested(key: str, value: Any, origin: str | None = None) -> dict[str, Any]:
    parts = key.split(".")
    if len(parts) > 3 and tuple(parts[:2]) in _PASSTHROUGH_MAPS:
        parts = parts[:2] + [".".join(parts[2:])]
    if not all(parts):
        raise ConfigError(origin or key, "malformed key")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            merged = dict(base[key])
            _merge(merged, value)
            base[key] = merged
        else:
            base[key] = value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(path or "<root>", f"expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(_join(path, key), f"unknown key (known: {', '.join(sorted(known))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], _join(path, f.name), f.name)
    if cls is CoordinateSettings:
        kwargs = _with_named_coordinate_defaults(path, kwargs)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(_join(path, exc.key), exc.problem) from None
    except TypeError as exc:  # a required key is missing
        raise ConfigError(path or "<root>", str(exc)) from None


def _with_named_coordinate_defaults(path: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``[model.coordinates.member]`` may override single keys of the built-in coordinate."""
    name = path.rsplit(".", 1)[-1]
    builtin = default_coordinates().get(name)
    if builtin is None:
        for required in ("entity_field", "feature_bags"):
            if required not in kwargs:
                raise ConfigError(_join(path, required), "required for a new coordinate")
        return kwargs
    return {**dataclasses.asdict(builtin), **kwargs}


def _coerce(hint: Any, value: Any, key: str, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return tuple(_coerce(args[0], item.strip() if isinstance(item, str) else item, key, name) for item in items)
    if origin in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a table, got {value!r}")
        value_hint = args[1]
        if dataclasses.is_dataclass(value_hint) and isinstance(value_hint, type):
            return {k: _build(value_hint, v, _join(key, k)) for k, v in value.items()}
        if value_hint in (float, int, str, bool):
            return {str(k): _coerce_scalar(value_hint, v, _join(key, str(k))) for k, v in value.items()}
        return {str(k): _coerce_client_value(v, _join(key, str(k))) for k, v in value.items()}
    return _coerce_scalar(hint, value, key)


def _coerce_client_value(value: Any, key: str) -> ClientValue:
    if isinstance(value, (str, int, float, bool)):
        return value
    raise ConfigError(key, f"passed-through values (librdkafka, Spark) are strings, numbers or booleans, got {value!r}")


def _coerce_scalar(hint: type, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(key, f"must be finite, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported setting type {hint!r}")  # pragma: no cover - programming error
