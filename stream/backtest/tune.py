"""``glmix tune``: choose each coordinate's prior and the global L2 by backtest, never on the period it reports on.

The log is split in event time, at a share of its impressions: settings are chosen by the progressive AUC of
backtests over the validation period (the log before the split), then the defaults and
the chosen settings are both replayed over the whole log and judged by the AUC of the
examples after the split only (DESIGN §9). The search is a small grid walked one
setting at a time (coordinate-wise, in a fixed order, each setting keeping the best value
found so far, and changing only for a validation gain of at least ``min_gain``, so
noise in a small validation period does not pick settings): a few dozen backtests,
deterministic, and no new dependency — a Bayesian optimizer would pay off only with far
more settings than these. The global L2 is searched only with refits (``--refit-every``): nothing else fits the
global model. Without refits each log is joined once and every trial replays only the learning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from msgspec.structs import replace

from stream.backtest.replay import Backtest, BacktestOptions, BacktestResult, JoinedLog
from stream.config import Settings
from stream.consumers.labeling import IMPRESSION, JoinInput
from stream.errors import GlmixError
from stream.evaluation.progressive import progressive_report
from stream.model.losses import get_loss
from stream.progress import Progress

log = logging.getLogger(__name__)


class TuneError(GlmixError):
    """The log cannot be split into a validation and an evaluation period."""


GLOBAL_L2 = "model.global_l2"
COORDINATE_GRID: Mapping[str, Sequence[Any]] = {
    "l2": (1.0, 3.0, 10.0, 30.0),
    "intercept_l2": (0.1, 1.0, 10.0),
    "forgetting": (1.0, 0.99, 0.95),
    "precision": ("full", "diagonal"),
}
GLOBAL_GRID: Sequence[float] = (0.1, 1.0, 10.0)


@dataclass
class TuneResult:
    """The chosen settings (dotted keys), and the AUCs of the defaults and of the choice on both periods."""

    chosen: dict[str, Any]
    validation_auc: dict[str, float]
    evaluation_auc: dict[str, float]
    split_ms: int
    trials: list[dict[str, Any]] = field(default_factory=list)

    def toml(self) -> str:
        """The chosen settings as a TOML fragment to paste into a settings file."""
        tables: dict[str, list[str]] = {}
        for key, value in self.chosen.items():
            table, _, name = key.rpartition(".")
            tables.setdefault(table, []).append(f"{name} = {_toml_value(value)}")
        return "\n\n".join(f"[{table}]\n" + "\n".join(lines) for table, lines in tables.items()) + "\n"


def _toml_value(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def with_setting(settings: Settings, key: str, value: Any) -> Settings:
    """``settings`` with one dotted setting replaced (``model.global_l2``, ``model.coordinates.member.l2``)."""
    if key == GLOBAL_L2:
        return replace(settings, model=replace(settings.model, global_l2=value))
    _, _, name, field_name = key.split(".")
    coordinates = dict(settings.model.coordinates)
    coordinates[name] = replace(coordinates[name], **{field_name: value})
    return replace(settings, model=replace(settings.model, coordinates=coordinates))


class _Replays:
    """Backtests of one event log under many settings; without refits the log is joined once and learned from
    under each (:meth:`~stream.backtest.replay.Backtest.joined`), which leaves each trial its learning only."""

    def __init__(self, settings: Settings, options: BacktestOptions, events: Sequence[JoinInput]) -> None:
        self.options, self.events = options, events
        self.joined: JoinedLog | None = None if options.refit_every_ms else Backtest(settings, options).joined(events)

    def run(self, settings: Settings, progress: Progress | None) -> BacktestResult:
        backtest = Backtest(settings, self.options)
        if self.joined is not None:
            return backtest.run_joined(self.joined, progress)
        return backtest.run(self.events, progress)


def _auc(settings: Settings, replays: _Replays, from_ms: int, progress: Progress | None = None) -> float:
    """Full-model progressive AUC of the examples at or after ``from_ms`` in a backtest of the replayed log."""
    columns = replays.run(settings, progress).emitted.columns()
    report = progressive_report(
        columns.take(columns.event_times >= from_ms).trace(), get_loss(settings.model.loss), windows=1
    )
    full = list(report["variants"])[-1]
    return float(report["variants"][full]["auc"] or 0.0)


def tune(
    settings: Settings,
    events: Sequence[JoinInput],
    options: BacktestOptions,
    split: float = 0.7,
    min_gain: float = 0.002,
    progress: Progress | None = None,
) -> TuneResult:
    """Choose settings on the log before ``split`` (a share of its impressions, in time order); judge them after it.

    ``progress`` counts the events of every backtest, its total set here (the grid fixes how many run).
    """
    impression_times = [e.record["event_time"] for e in events if e.kind == IMPRESSION]
    if len(impression_times) < 2:
        raise TuneError("the event log needs impressions on both sides of the split")
    first, split_ms = impression_times[0], impression_times[int(split * (len(impression_times) - 1))]
    validation = [e for e in events if e.record["event_time"] < split_ms]
    judged_from = int(first + 0.5 * (split_ms - first))  # validation AUC leaves out the cold start of the replay
    trials: list[dict[str, Any]] = []
    axes: list[tuple[str, Sequence[Any]]] = [
        (f"model.coordinates.{name}.{setting}", values)
        for name in settings.model.coordinates
        for setting, values in COORDINATE_GRID.items()
    ]
    if options.refit_every_ms:  # only a refit fits the global model: without one its L2 changes nothing
        axes.append((GLOBAL_L2, GLOBAL_GRID))
    # Each setting is tried once, on top of the settings before it, so how many trials run is known now.
    searched = 1 + sum(sum(v != _current(settings, key) for v in values) for key, values in axes)
    if progress is not None:
        progress.total = searched * len(validation) + 2 * len(events)

    def score(candidate: Settings, label: dict[str, Any]) -> float:
        if progress is not None:
            progress.relabel(f"tune: trial {len(trials) + 1} of {searched}")
        auc = _auc(candidate, validating, judged_from, progress)
        trials.append({**label, "validation_auc": round(auc, 5)})
        log.info("tune: %s -> validation AUC %.4f", label, auc)
        return auc

    if progress is not None:
        progress.relabel("tune: joining the validation period")
    validating = _Replays(settings, options, validation)
    best, best_auc = settings, score(settings, {"defaults": True})
    default_auc = best_auc
    chosen: dict[str, Any] = {}
    for key, values in axes:
        current = _current(best, key)
        for value in values:
            if value == current:
                continue
            candidate = with_setting(best, key, value)
            auc = score(candidate, {**chosen, key: value})
            if auc > best_auc + min_gain:
                best, best_auc, chosen[key] = candidate, auc, value
    evaluation = {}
    if progress is not None:
        progress.relabel("tune: joining the whole log")
    judging = _Replays(settings, options, events)
    for name, candidate in (("defaults", settings), ("tuned", best)):
        if progress is not None:
            progress.relabel(f"tune: judging the {name} after the split")
        evaluation[name] = _auc(candidate, judging, split_ms, progress)
    if progress is not None:
        progress.relabel("tune")
    return TuneResult(chosen, {"defaults": default_auc, "tuned": best_auc}, evaluation, split_ms, trials)


def _current(settings: Settings, key: str) -> Any:
    if key == GLOBAL_L2:
        return settings.model.global_l2
    _, _, name, field_name = key.split(".")
    return getattr(settings.model.coordinates[name], field_name)
