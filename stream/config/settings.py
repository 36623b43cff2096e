"""The one typed configuration object of glmix-stream: the schema.

Settings are frozen :class:`msgspec.Struct` s built once at start-up by
:func:`stream.config.loader.load_settings` from, in increasing precedence: built-in
defaults, a TOML file, ``GLMIX_...`` environment variables, and ``--set key=value``
command-line overrides. Each bound is declared on its field (``Annotated[int, Meta(ge=1)]``,
a ``Literal`` of the allowed words) and checked by msgspec while the object is built;
``__post_init__`` holds only the rules that relate fields. A broken rule raises
:class:`ConfigError` naming the key. Nothing else in the package reads the environment.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

from stream.config.exceptions import ConfigError

Loss = Literal["logistic", "linear", "poisson"]
PriorKind = Literal["l2", "bayes"]
PrecisionKind = Literal["full", "diagonal"]
UnseenFeaturePolicy = Literal["admit", "drop"]
ClientValue = str | int | float | bool
TableKind = Literal["memory", "rocksdb"]
InputLoss = Literal["skip", "stop"]

# Every float setting is finite: the largest float as a bound refuses nan and +-inf, which compare false or beyond it.
LARGEST = sys.float_info.max
Finite = Annotated[float, Meta(ge=-LARGEST, le=LARGEST)]
NonNegative = Annotated[float, Meta(ge=0, le=LARGEST)]
Positive = Annotated[float, Meta(gt=0, le=LARGEST)]
Count = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
Name = Annotated[str, Meta(pattern=r"\S", description="a non-blank name")]
Bags = Annotated[tuple[str, ...], Meta(min_length=1, description="a list of at least one feature bag")]
Port = Annotated[int, Meta(ge=0, le=65535, description="a TCP port (0: any free port)")]

SEGMENT_FIELDS = ("member_id", "item_id", "random_bucket", "position")


def is_segment_field(field: str) -> bool:
    """Whether labeled examples can be grouped by ``field``: a segment field, or ``context:<key>``."""
    return field in SEGMENT_FIELDS or (field.startswith("context:") and len(field) > len("context:"))


def entity_of(record: Mapping[str, Any], entity_field: str) -> str:
    """The entity id a coordinate keys on (its ``entity_field``): a record field, or ``context:<key>``."""
    if entity_field.startswith("context:"):
        return str(record.get("context", {}).get(entity_field[len("context:") :], ""))
    return str(record[entity_field])


MEMBER_BAGS = ("member_title", "member_skills", "member_seniority", "member_location")
JOB_BAGS = ("job_title", "job_skills", "job_company", "job_seniority")


class RuleBroken(ConfigError, ValueError):
    """A rule relating fields is broken: raised by ``__post_init__``, with ``key`` relative to its struct.

    A ``ValueError`` so that msgspec, building a nested struct, keeps it as the cause of its
    error and the path of the struct, from which the loader names the full dotted key.
    """


def _rule(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise RuleBroken(key, problem)


class _Settings(Struct, frozen=True, forbid_unknown_fields=True):
    """A frozen settings table that refuses keys it does not know."""


class TopicSettings(_Settings, frozen=True):
    """Kafka topic names (DESIGN §3) and how to create them where CreateTopics works."""

    impressions: Name = "glmix.impressions"
    interactions: Name = "glmix.interactions"
    examples_by_member: Name = "glmix.examples.by-member"
    examples_by_job: Name = "glmix.examples.by-job"
    examples_prefix: Name = "glmix.examples.by-"
    coefficients_prefix: Name = "glmix.coefficients."
    model_global: Name = "glmix.model.global"
    dead_letter: Name = "glmix.dead-letter"
    score_requests: Name = "glmix.score-requests"
    score_results: Name = "glmix.score-results"
    items: Name = "glmix.items"
    partitions: Count = 4
    replication_factor: Count = 1

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


class KafkaSettings(_Settings, frozen=True):
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
    group_prefix: Name = "glmix"
    client: Mapping[str, ClientValue] = field(default_factory=dict)
    producer: Mapping[str, ClientValue] = field(default_factory=dict)
    consumer: Mapping[str, ClientValue] = field(default_factory=dict)
    admin: Mapping[str, ClientValue] = field(default_factory=dict)
    schema_registry: Mapping[str, ClientValue] = field(default_factory=dict)
    input_loss: InputLoss = "skip"

    def group_id(self, stage: str) -> str:
        """The consumer group of a pipeline stage (``joiner``, ``updater-member``, ...)."""
        return f"{self.group_prefix}-{stage}"

    def changelog_topic(self, stage: str) -> str:
        """The compacted changelog of a stateful stage's stores: it belongs to the stage's consumer group."""
        return f"{self.group_id(stage)}-changelog"


EntityField = Annotated[
    str, Meta(pattern=r"^(member_id|item_id|context:.+)$", description="member_id, item_id or context:<key>")
]


class CoordinateSettings(_Settings, frozen=True):
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

    entity_field: EntityField
    feature_bags: Bags
    max_features: Count = 32
    unseen_features: UnseenFeaturePolicy = "admit"
    intercept: bool = True
    prior: PriorKind = "bayes"
    precision: PrecisionKind = "full"
    l2: NonNegative = 1.0
    intercept_l2: NonNegative = 1.0
    forgetting: Annotated[float, Meta(gt=0, le=1)] = 1.0
    newton_steps: Count = 10
    gradient_tolerance: Positive = 1e-6
    window_events: Count = 64
    window_max_age_ms: Annotated[int, Meta(ge=0, description=">= 0 (0: no age limit)")] = 0
    batch_size: Count = 2000
    batch_time_ms: Count = 200

    def __post_init__(self) -> None:
        _rule(
            not self.intercept or self.max_features >= 2,
            "max_features",
            "must be >= 2 when intercept = true (the intercept takes one column)",
        )


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


class TransformSettings(_Settings, frozen=True):
    """One feature transform of the feed relevance toolbox, applied on every path (DESIGN §8).

    The table key names the feature: for ``log`` (``log1p`` of a count), ``indicator``
    (1 when the value is > 0), ``bucketize`` (the term becomes the bucket ``[lo,hi)`` of
    ``boundaries``, value 1) and ``spline`` (linear interpolation between the two
    neighbouring ``boundaries``, one term per knot) it is the input feature name, in any bag.
    For ``product`` it is the name of the new feature: the product of the two ``inputs``
    feature names, written into bag ``bag``.
    """

    kind: TransformKind
    boundaries: tuple[Finite, ...] = ()
    inputs: tuple[str, ...] = ()
    bag: str = ""

    def __post_init__(self) -> None:
        increasing = all(a < b for a, b in zip(self.boundaries, self.boundaries[1:]))
        if self.kind in ("bucketize", "spline"):
            least = 1 if self.kind == "bucketize" else 2
            _rule(
                len(self.boundaries) >= least and increasing,
                "boundaries",
                f"{self.kind} needs >= {least} strictly increasing boundaries, got {list(self.boundaries)}",
            )
        else:
            _rule(not self.boundaries, "boundaries", f"{self.kind} takes no boundaries")
        if self.kind == "product":
            _rule(len(self.inputs) == 2, "inputs", f"product multiplies two feature names, got {list(self.inputs)}")
            _rule(bool(self.bag), "bag", "product needs the bag its feature goes into")
        else:
            _rule(not self.inputs and not self.bag, "inputs", f"{self.kind} transforms the feature it is keyed by")


class ModelSettings(_Settings, frozen=True):
    """The GLMix model spec: link/loss, the global coordinate, the random-effect coordinates, feature transforms."""

    loss: Loss = "logistic"
    global_feature_bags: Bags = MEMBER_BAGS + JOB_BAGS
    global_l2: NonNegative = 1.0
    coordinates: Mapping[str, CoordinateSettings] = field(default_factory=default_coordinates)
    transforms: Mapping[str, TransformSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.coordinates:
            _rule(
                name.replace("_", "").replace("-", "").isalnum() and name != "global",
                f"coordinates.{name}",
                "coordinate names are letters, digits, '-' and '_', and 'global' is reserved",
            )


def default_labels() -> dict[str, float]:
    """Interaction types that make an impression positive, with the label each gives."""
    return {"CLICK": 1.0, "APPLY": 1.0}


class JoinerSettings(_Settings, frozen=True):
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

    attribution_window_ms: Count = 15 * 60 * 1000
    allowed_lateness_ms: NonNegativeInt = 60 * 1000
    labels: Annotated[
        Mapping[str, Finite], Meta(min_length=1, description="a table of at least one interaction type")
    ] = field(default_factory=default_labels)
    batch_size: Count = 5000
    batch_time_ms: Count = 100
    idle_input_ms: NonNegativeInt = 10_000
    emitted_retention_ms: int = 60 * 60 * 1000
    early_positives: bool = False
    bootstrap_model: bool = True
    bootstrap_impressions: Count = 5000
    bootstrap_wait_ms: NonNegativeInt = 60_000

    def __post_init__(self) -> None:
        _rule(
            self.emitted_retention_ms >= self.attribution_window_ms,
            "emitted_retention_ms",
            f"must be >= attribution_window_ms ({self.attribution_window_ms}), got {self.emitted_retention_ms}",
        )


class ServingSettings(_Settings, frozen=True):
    """The scoring HTTP service (``glmix serve``): where it listens and what one request may ask.

    ``exploration`` keeps every entity's posterior precision so requests may ask for
    Thompson sampling or UCB (d(d+1)/2 doubles per entity with full precisions). ``table``
    says where the coefficient tables of the scorer and the joiner live: ``memory`` (every
    entity in RAM), or ``rocksdb`` (every entity on local disk under ``state_dir``, the
    ``cache_entities`` most recently used in RAM) for coordinates larger than memory.
    ``workers`` scoring processes share the port (:mod:`stream.scoring.workers`): one per core.
    ``metrics_dir`` is set by ``glmix serve`` for those workers: the directory where they
    share their Prometheus metrics (empty: this process's metrics alone).
    """

    host: str = "0.0.0.0"
    port: Port = 8080
    max_candidates: Count = 1000
    max_features_per_bag: Count = 1000
    max_body_bytes: Count = 4 * 1024 * 1024
    refresh_ms: Count = 100
    exploration: bool = False
    table: TableKind = "memory"
    cache_entities: Count = 100_000
    workers: Count = 1
    metrics_dir: str = ""


class ArchiveSettings(_Settings, frozen=True):
    """Where ``glmix run archive`` keeps labeled examples for the refit and offline evaluation.

    ``path`` is a local directory or any fsspec URL (``s3://bucket/prefix`` with s3fs
    installed); empty means ``<state_dir>/archive``. Files are hourly by event time, ``dt=YYYY-MM-DD/hour=HH/``; a file is
    written whole (``roll_records`` examples or ``roll_interval_ms`` of buffering,
    whichever comes first) and named by its partition and offset range, so a restart
    never duplicates an example. Hours older than ``retention_hours`` before the newest
    archived hour are deleted (0 keeps everything).
    """

    path: str = ""
    roll_records: Count = 50_000
    roll_interval_ms: Count = 60_000
    retention_hours: Annotated[int, Meta(ge=0, description=">= 0 (0 keeps everything)")] = 7 * 24
    batch_size: Count = 5000
    batch_time_ms: Count = 200


GateMetric = Literal["auc", "log_loss"]
RefitOffsets = Literal["current", "join_time"]
RefitCandidates = Literal["residual", "standalone", "both"]
TrainingExamples = Literal["all", "random_bucket"]
RefitEngine = Literal["local", "spark"]


class RefitSettings(_Settings, frozen=True):
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

    window_hours: Positive = 24.0
    holdout_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.1
    gate_metric: GateMetric = "auc"
    gate_tolerance: NonNegative = 0.002
    offsets: RefitOffsets = "join_time"
    max_iterations: Count = 200
    chunk_rows: Count = 200_000
    min_examples: Count = 100
    output_dir: str = ""
    model_name: Name = "glmix"
    grow_vocabulary: bool = True
    grow_global_vocabulary: bool = True
    vocabulary_min_count: Count = 5
    training_examples: TrainingExamples = "all"
    candidates: RefitCandidates = "both"
    negative_sample_rate: Annotated[float, Meta(gt=0, le=1, description="in (0, 1] (1 keeps every negative)")] = 1.0
    engine: RefitEngine = "local"
    spark_master: str = ""
    spark: Mapping[str, ClientValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _rule(
            not (self.engine == "spark" and self.offsets == "current"),
            "engine",
            "the spark engine fits around join-time offsets (refit.offsets = join_time); current offsets need "
            "every coefficient table in one process",
        )
        for key in self.spark:
            _rule(key.startswith("spark."), f"spark.{key}", "Spark properties start with 'spark.'")


class GameInputSettings(_Settings, frozen=True):
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

    response: Name = "response"
    weight: Name = "weight"
    offset: Name = "offset"
    uid: Name = "uid"
    metadata_map: Name = "metadataMap"
    event_time: str = ""
    bags: Mapping[str, Name] = field(default_factory=dict)
    ids: Mapping[str, Name] = field(default_factory=dict)

    def bag_field(self, bag: str) -> str:
        """The record field that holds model bag ``bag``."""
        return self.bags.get(bag, bag)

    def id_field(self, coordinate: str, settings: CoordinateSettings) -> str:
        """The record field (or map key) that holds ``coordinate``'s entity id."""
        return self.ids.get(coordinate, settings.entity_field.removeprefix("context:"))


class MetricsSettings(_Settings, frozen=True):
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
    port: Port = 9108
    kafka_statistics_interval_ms: Annotated[int, Meta(ge=100)] = 5000
    segment_by: str = ""
    segment_values: Count = 20
    history_edges: Annotated[tuple[Count, ...], Meta(min_length=1)] = (1, 5, 20)

    def __post_init__(self) -> None:
        _rule(
            all(a < b for a, b in zip(self.history_edges, self.history_edges[1:])),
            "history_edges",
            f"must be increasing counts >= 1, got {list(self.history_edges)}",
        )
        _rule(
            not self.segment_by or is_segment_field(self.segment_by),
            "segment_by",
            f"must be one of {', '.join(SEGMENT_FIELDS)} or context:<key>, got {self.segment_by!r}",
        )


class Settings(_Settings, frozen=True):
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
    restore_max_records_per_s: Annotated[int, Meta(ge=0, description=">= 0 (0: unlimited)")] = 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    batching: Literal["natural", "fixed"] = "natural"

    def __post_init__(self) -> None:
        bags = set(self.model.global_feature_bags).union(*(c.feature_bags for c in self.model.coordinates.values()))
        for bag in self.game_input.bags:
            _rule(
                bag in bags,
                f"game_input.bags.{bag}",
                f"is not a bag of the model (its bags: {', '.join(sorted(bags))})",
            )
        for coordinate in self.game_input.ids:
            _rule(
                coordinate in self.model.coordinates,
                f"game_input.ids.{coordinate}",
                f"is not a configured coordinate ({', '.join(self.model.coordinates)})",
            )

    @property
    def archive_path(self) -> str:
        """Where labeled examples are archived: ``archive.path``, or ``<state_dir>/archive``."""
        return self.archive.path or str(Path(self.state_dir) / "archive")

    @property
    def models_dir(self) -> str:
        """Where the refit writes model files: ``refit.output_dir``, or ``<state_dir>/models``."""
        return self.refit.output_dir or str(Path(self.state_dir) / "models")
