"""``glmix bootstrap``: the first feature indexes and a fitted global model, from a team's history.

A deployment that has history starts from it instead of from the joiner's warm-up
(DESIGN §1): the history's impressions give every coordinate's first index (most
frequent features first, up to capacity), the live join rule labels them (one
partition, in event-time order, every window closed at the end), and one GAME pass
fits them: the global coordinate as the refit fits it, then every random-effect
coordinate's entities around the rest (:func:`first_model`), locally or on Spark
(``refit.engine``, :func:`stream.refit.spark.spark_bootstrap_model`). The entities go out
as version 1 of their coefficients, then the record as version 1 of ``model.global``; an
existing model is never replaced, since every state and coefficient already published is
tied to its columns.

History may also be Photon-ML ``TrainingExampleAvro`` files, which are labeled already
but carry one flat list of name–term–value features: :class:`PhotonBagRules` says which
feature bag each feature name belongs to (``--photon-bag PATTERN=BAG``), and a feature
whose name matches no rule goes to the bag of its own name, if the model has one.
"""

from __future__ import annotations

import fnmatch
import tempfile
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from stream.codec.container import read_container
from stream.codec.photon import INTERCEPT_NAME
from stream.codec.schemas import load_schema
from stream.config import ConfigError, ModelSettings, Settings
from stream.consumers.join_state import IMPRESSIONS, INTERACTIONS, JoinBatch
from stream.consumers.labeling import IMPRESSION, ExampleJoin, JoinInput, interaction_types
from stream.errors import GlmixError
from stream.model.dataset import build_dataset
from stream.model.export import (
    fitted_global_model_record,
    global_coordinate_spec,
    initial_global_model_record,
    random_effect_spec,
)
from stream.model.game import CoordinateSpec, GameDataset, RandomEffectModel, fit_global_blocks, fit_random_effect
from stream.model.losses import Loss, get_loss
from stream.model.transforms import FeatureTransforms
from stream.progress import Progress
from stream.refit.examples import ExampleSplit, MemoryExamples, RowBatch
from stream.refit.first_models import publish_first_models
from stream.state.partition_store import open_or_wipe
from stream.tables.models import GlobalModel, GlobalModelTable

if TYPE_CHECKING:
    from stream.refit.game_models import PhotonImport

_CHUNK = 20_000


class BootstrapError(GlmixError):
    """No first model can be built or published: say why."""


def labels_of_history(
    settings: Settings, events: Sequence[JoinInput], progress: Progress | None = None, history_end_ms: int | None = None
) -> dict[str, float]:
    """Each impression's label under the live join rule, by impression id (impressions whose window never closed: none).

    ``progress`` counts the events joined; the caller owns it. ``history_end_ms`` is the
    newest event time of the whole history when ``events`` are only part of it (the
    impression ids of one Spark partition): their last windows then close as the whole
    history's do, not at their own newest event. Before the end, windows close by the
    part's own watermark, which labels as the whole history does unless an interaction
    comes more than the allowed lateness before its impression in event time.
    """
    first = next((e.full_record() for e in events if e.kind == IMPRESSION), None)
    table = GlobalModelTable(settings.model)
    table.apply(
        [initial_global_model_record([first] if first is not None else [], settings.model)]
    )  # any index: only labels are kept
    join = ExampleJoin(settings, interaction_types(load_schema("Interaction").plain))
    labels: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="glmix-bootstrap-") as workdir:
        store, _ = open_or_wipe(Path(workdir) / "join")
        try:
            for start in range(0, len(events), _CHUNK):
                chunk = events[start : start + _CHUNK]
                _label(join, store, chunk, table, labels, frozenset())
                if progress is not None:
                    progress.advance(len(chunk))
            through = None if history_end_ms is None else history_end_ms - join.rules.lateness_ms
            _label(join, store, [], table, labels, frozenset({IMPRESSIONS, INTERACTIONS}), through)
        finally:
            store.close()
    return labels


def _label(
    join: ExampleJoin,
    store,
    events,
    table: GlobalModelTable,
    labels: dict[str, float],
    idle: frozenset[str],
    through: int | None = None,
) -> None:
    if through is None:
        batch = join.join(store, events, table.current, idle)
    else:  # the end of a part of the history: close what the whole history's watermark closes
        batch = JoinBatch(store, join.rules, ())
        batch.close_windows(idle, through)
    for example in join.labeled(batch.result.emissions, None, {}):
        labels[example["example_id"]] = example["label"]
    batch.write({})


@dataclass(frozen=True)
class BootstrapModel:
    """The first model from history: version 1 of the global model, and every coordinate's fitted entities."""

    record: dict[str, Any]
    random_effects: Mapping[str, RandomEffectModel] = field(default_factory=dict)

    @classmethod
    def of_import(cls, plan: PhotonImport) -> BootstrapModel:
        """A GAME model trained from history (``glmix bootstrap`` of GAME input files) as a first model."""
        return cls(
            plan.record,
            {
                name: RandomEffectModel(np.asarray(c.entity_ids, dtype=str), c.means, c.precisions)
                for name, c in plan.coordinates.items()
            },
        )

    def entity_models(self) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
        """Per coordinate, (entity ids, means, precision diagonals) as the entity publisher takes them."""
        return {
            name: (effect.entity_ids.tolist(), effect.means, effect.precisions)
            for name, effect in self.random_effects.items()
        }


class HistoryRows(ABC):
    """The labeled impressions of a history as the GAME pass needs them, wherever they live (local or Spark)."""

    @abstractmethod
    def global_split(self) -> ExampleSplit:
        """The global coordinate's rows (offsets 0), in history order, as chunks of ``refit.chunk_rows``."""

    @abstractmethod
    def fit_coordinate(
        self, name: str, spec: CoordinateSpec, loss: Loss, beta: np.ndarray, fitted: Mapping[str, RandomEffectModel]
    ) -> RandomEffectModel:
        """Coordinate ``name``'s entities, each fitted on its rows around the global margin plus ``fitted``'s scores."""


class MemoryHistory(HistoryRows):
    """Labeled impressions in this process (the local engine)."""

    def __init__(
        self, settings: Settings, record: Mapping[str, Any], impressions: Sequence[Mapping], labels: np.ndarray
    ):
        self.data = history_dataset(settings, record, impressions, labels)
        self._split = MemoryExamples.of(
            global_rows(self.data.global_features, self.data.labels, np.zeros(len(labels))),
            self.data.global_features.shape[1],
            settings.refit.chunk_rows,
        )

    def global_split(self) -> ExampleSplit:
        """The rows in chunks held in memory."""
        return self._split

    def fit_coordinate(
        self, name: str, spec: CoordinateSpec, loss: Loss, beta: np.ndarray, fitted: Mapping[str, RandomEffectModel]
    ) -> RandomEffectModel:
        """:func:`~stream.model.game.fit_random_effect` of every entity at once."""
        offsets = self._split.margins(beta)
        for other, effect in fitted.items():
            offsets = offsets + effect.score(self.data.random_effects[other])
        data = self.data.random_effects[name]
        return fit_random_effect(data, self.data.labels, self.data.row_weights, offsets, spec, loss)


def history_dataset(
    settings: Settings, record: Mapping[str, Any], impressions: Sequence[Mapping], labels: np.ndarray
) -> GameDataset:
    """Labeled impressions indexed by ``record``'s indexes: the global rows and every coordinate's entity rows."""
    model = GlobalModel.from_record(record, settings.model)
    coordinates = {
        name: (c.entity_field, model.coordinate_indices[name]) for name, c in settings.model.coordinates.items()
    }
    transforms = FeatureTransforms.from_settings(settings.model)
    return build_dataset(impressions, labels, model.global_index, coordinates, transforms=transforms)


def global_rows(features: sp.csr_matrix, labels: np.ndarray, times: np.ndarray) -> RowBatch:
    """Labeled rows of the global coordinate (unit weights, zero offsets) as split rows."""
    n = len(labels)
    return RowBatch(
        np.asarray(labels, dtype=np.float64),
        np.ones(n),
        np.zeros(n),
        np.zeros(n),
        np.asarray(times, dtype=np.int64),
        np.diff(features.indptr),
        features.indices,
        features.data,
    )


def first_model(settings: Settings, record: dict[str, Any], rows: HistoryRows) -> BootstrapModel:
    """One GAME pass over labeled history: the global coordinate (L-BFGS), then each random effect around the rest.

    The same code for every engine: only where ``rows`` live differs. The global penalty is
    the refit's (``model.global_l2``, intercept unpenalized); each entity's is its
    coordinate's new-entity prior, so streaming goes on from these states.
    """
    loss = get_loss(settings.model.loss)
    split = rows.global_split()
    beta = fit_global_blocks(
        lambda partial: split.summed_blocks(partial),
        split.dim,
        global_coordinate_spec(settings.model),
        loss,
    )
    fitted: dict[str, RandomEffectModel] = {}
    for name, configured in settings.model.coordinates.items():
        fitted[name] = rows.fit_coordinate(name, random_effect_spec(configured), loss, beta, fitted)
    return BootstrapModel({**record, "coefficients": beta.tolist()}, fitted)


def bootstrap_model(
    settings: Settings, events: Sequence[JoinInput], progress: Progress | None = None
) -> BootstrapModel:
    """Version 1 of the global model and every entity's first coefficients, fitted on ``events``' labels in this process.

    Indexes come from every impression of ``events``; the labeled impressions (the live
    join rule, :func:`labels_of_history`) are fitted by :func:`first_model`. ``progress``
    counts the events labeled.
    """
    impressions = [e.full_record() for e in events if e.kind == IMPRESSION]
    if not impressions:
        raise BootstrapError("the history holds no impressions")
    record = initial_global_model_record(impressions, settings.model)
    labels = labels_of_history(settings, events, progress)
    labeled = [imp for imp in impressions if imp["impression_id"] in labels]
    if not labeled:
        return BootstrapModel(record)
    y = np.array([labels[i["impression_id"]] for i in labeled])
    return first_model(settings, record, MemoryHistory(settings, record, labeled, y))


@dataclass(frozen=True)
class PhotonBagRules:
    """Which feature bag a Photon-ML feature belongs to, by its name: the first matching ``(pattern, bag)`` rule.

    Patterns are shell-style (``member_*``); a name no rule matches goes to the bag of
    the same name. Photon-ML's ``(INTERCEPT)`` is never a feature here: every
    coordinate has its own intercept.
    """

    rules: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> PhotonBagRules:
        """Rules from ``PATTERN=BAG`` texts (the ``--photon-bag`` option), in order."""
        rules = []
        for text in texts:
            pattern, sep, bag = text.partition("=")
            if not sep or not pattern or not bag:
                raise ConfigError(
                    "--photon-bag", f"expected PATTERN=BAG (e.g. 'member_skill=member_skills'), got {text!r}"
                )
            rules.append((pattern, bag))
        return cls(tuple(rules))

    def bag_of(self, name: str, bags: frozenset[str]) -> str | None:
        """The bag of feature ``name`` among the model's ``bags``; None when it has none."""
        for pattern, bag in self.rules:
            if fnmatch.fnmatchcase(name, pattern):
                return bag if bag in bags else None
        return name if name in bags else None


@dataclass
class PhotonHistory:
    """Photon-ML training records as impressions with their labels, weights and offsets."""

    impressions: list[Mapping[str, Any]] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)
    unmapped: Counter[str] = field(default_factory=Counter)

    @classmethod
    def read(cls, paths: Sequence[str | Path], rules: PhotonBagRules, model: ModelSettings) -> PhotonHistory:
        """Every ``TrainingExampleAvro`` record of ``paths``; features of no model bag are counted in ``unmapped``."""
        bags = frozenset(model.global_feature_bags).union(*(c.feature_bags for c in model.coordinates.values()))
        unknown = sorted({bag for _, bag in rules.rules} - bags)
        if unknown:
            raise ConfigError(
                "--photon-bag",
                f"{unknown[0]!r} is not a feature bag of the model (its bags: {', '.join(sorted(bags))})",
            )
        history = cls()
        for path in paths:
            for record in read_container(path, "TrainingExampleAvro"):
                history._add(record, rules, bags, model.loss)
        if not history.impressions:
            raise BootstrapError("the Photon-ML files hold no training records")
        if not any(imp["features"] for imp in history.impressions):
            top = ", ".join(name for name, _ in history.unmapped.most_common(5))
            raise BootstrapError(
                f"no Photon-ML feature maps to a feature bag of the model (most frequent names: {top}): "
                "say where they go with --photon-bag PATTERN=BAG"
            )
        return history

    def _add(self, record: Mapping[str, Any], rules: PhotonBagRules, bags: frozenset[str], loss: str) -> None:
        label = float(record["label"])
        if loss == "logistic" and label not in (0.0, 1.0):
            raise BootstrapError(f"Photon-ML record {record.get('uid')!r}: label {label} (logistic models need 0 or 1)")
        features: dict[str, list[dict[str, Any]]] = {}
        for feature in record["features"]:
            name = feature["name"]
            if name == INTERCEPT_NAME:
                continue
            bag = rules.bag_of(name, bags)
            if bag is None:
                self.unmapped[name] += 1
                continue
            features.setdefault(bag, []).append({"name": name, "term": feature["term"], "value": feature["value"]})
        uid = record.get("uid") or f"photon-{len(self.impressions)}"
        self.impressions.append({"impression_id": uid, "member_id": "", "item_id": "", "features": features})
        self.labels.append(label)
        self.weights.append(1.0 if record.get("weight") is None else float(record["weight"]))
        self.offsets.append(0.0 if record.get("offset") is None else float(record["offset"]))

    def model_record(self, model: ModelSettings) -> dict[str, Any]:
        """Version 1 of the global model: indexes from every record, coefficients fitted on the records' labels."""
        return fitted_global_model_record(
            self.impressions,
            np.array(self.labels),
            model,
            weights=np.array(self.weights),
            offsets=np.array(self.offsets),
        )


def publish_bootstrap(settings: Settings, model: BootstrapModel) -> None:
    """Every coordinate's fitted entities, then the global model as version 1 (refused when a model is published)."""
    publish_first_models(settings, model.record, model.entity_models(), "bootstrap")
