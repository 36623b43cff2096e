"""The event stream of a synthetic world: impressions, interactions, and the noise of real logs.

Requests arrive over time; each shows ``items_per_request`` jobs at positions 0..k-1
(ranked by a noisy production score, or shuffled in the random bucket). Clicks are drawn
from the true model and arrive after a realistic delay; some clicks lead to applies.
On top of the clean stream come duplicates, out-of-order arrivals, late interactions
(after the attribution window), interactions without an impression, and malformed
values, each at its configured share. Events are yielded in arrival order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stream.codec.validation import impression_record_problems, interaction_problem
from stream.synthetic.world import Entity, World

IMPRESSION = "impression"
INTERACTION = "interaction"


@dataclass(frozen=True)
class SyntheticEvent:
    """One record as it would be produced, in arrival order ``arrival_ms``.

    ``record`` is Avro data (possibly semantically invalid: a NaN feature, an empty id);
    ``raw`` replaces it with bytes that are not Avro at all; ``truncated`` asks the sink to
    cut the encoded value short. ``kind`` says which topic the event belongs to. ``malformed``: whether a correct
    pipeline must dead-letter the event, by the pipeline's own checks (:func:`event_stream` asks them).
    """

    kind: str
    key: str
    arrival_ms: int
    record: dict[str, Any] | None = None
    raw: bytes | None = None
    truncated: bool = False
    malformed: bool = False


def _malformed_flags(events: Sequence[SyntheticEvent]) -> list[bool]:
    """Whether a correct pipeline must dead-letter each event, by its own checks (the impressions as one batch)."""
    flags = [e.raw is not None or e.truncated or e.record is None for e in events]
    impressions: list[tuple[int, dict[str, Any]]] = []
    for i, e in enumerate(events):
        if flags[i] or e.record is None:
            continue
        if e.kind == IMPRESSION:
            impressions.append((i, e.record))
        else:
            flags[i] = interaction_problem(e.record) is not None
    for row in impression_record_problems([record for _, record in impressions]):
        flags[impressions[row][0]] = True
    return flags


@dataclass(frozen=True)
class LabeledImpression:
    """A clean impression with its true outcome, for training and evaluation without Kafka."""

    impression: dict[str, Any]
    clicked: bool
    applied: bool
    true_margin: float


def _bags_to_avro(entity: Entity) -> dict[str, list[dict[str, Any]]]:
    return {bag: [{"name": n, "term": t, "value": v} for n, t, v in feats] for bag, feats in entity.bags.items()}


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def labeled_impressions(world: World) -> list[LabeledImpression]:
    """The clean impressions of ``world`` with true clicks and applies, in event-time order."""
    rng = np.random.default_rng([world.spec.seed, 1])
    spec = world.spec
    activity = rng.pareto(1.2, size=len(world.members)) + 1.0  # a few members are very active
    activity /= activity.sum()
    out: list[LabeledImpression] = []
    now = spec.start_time_ms
    member_bags = [_bags_to_avro(m) for m in world.members]
    member_arrival = np.array([world.arrival.get(m.entity_id, 0.0) for m in world.members])
    job_arrival = np.array([world.arrival.get(j.entity_id, 0.0) for j in world.jobs])
    job_bags = [_bags_to_avro(j) for j in world.jobs]
    sessions = np.random.default_rng([spec.seed, 6])
    session_members = np.full(spec.concurrent_sessions, -1)
    for r in range(spec.requests):
        now += int(rng.exponential(spec.mean_request_gap_ms)) + 1
        slot = int(sessions.integers(spec.concurrent_sessions)) if spec.concurrent_sessions > 1 else 0
        continuing = session_members[slot] >= 0 and sessions.random() >= 1.0 / spec.session_requests
        mi = int(session_members[slot])
        if world.arrival:  # only members and jobs that have arrived by this point of the stream
            share = r / spec.requests
            if not continuing:
                present = activity * (member_arrival <= share)
                mi = int(rng.choice(len(world.members), p=present / present.sum()))
            open_jobs = np.flatnonzero(job_arrival <= share)
            candidates = rng.choice(open_jobs, size=min(spec.items_per_request, len(open_jobs)), replace=False)
        else:
            if not continuing:
                mi = int(rng.choice(len(world.members), p=activity))
            candidates = rng.choice(len(world.jobs), size=spec.items_per_request, replace=False)
        if spec.session_requests > 1:
            session_members[slot] = mi
        member = world.members[mi]
        margins = np.array([world.true_margin(member, world.jobs[j]) for j in candidates])
        random_bucket = bool(rng.random() < spec.random_bucket_rate)
        if random_bucket:
            order = rng.permutation(len(candidates))
        else:
            order = np.argsort(-(margins + rng.normal(0.0, 1.0, size=len(margins))))
        for position, k in enumerate(order):
            job = world.jobs[int(candidates[k])]
            clicked = bool(rng.random() < _sigmoid(margins[k]))
            applied = clicked and bool(rng.random() < spec.apply_given_click)
            impression = {
                "impression_id": f"imp-{r:07d}-{position}",
                "request_id": f"req-{r:07d}",
                "member_id": member.entity_id,
                "item_id": job.entity_id,
                "position": position,
                "event_time": now,
                "random_bucket": random_bucket,
                "features": {**member_bags[mi], **job_bags[int(candidates[k])]},
                "context": {
                    "surface": "jobs-you-may-be-interested-in",
                    **({"activity_type": world.activity_type[job.entity_id]} if world.activity_type else {}),
                },
            }
            out.append(LabeledImpression(impression, clicked, applied, float(margins[k])))
    return out


def _interaction(imp: dict[str, Any], n: int, kind: str, event_time: int) -> dict[str, Any]:
    return {
        "interaction_id": f"int-{n:08d}",
        "impression_id": imp["impression_id"],
        "member_id": imp["member_id"],
        "item_id": imp["item_id"],
        "type": kind,
        "event_time": event_time,
    }


_MALFORMED_KINDS = ("garbage", "truncated", "nan_feature", "empty_member")


def event_stream(world: World, labeled: list[LabeledImpression] | None = None) -> Iterator[SyntheticEvent]:
    """Every event of ``world`` (clean and noisy) in arrival order. Deterministic for a seed."""
    spec = world.spec
    rng = np.random.default_rng([spec.seed, 2])
    labeled = labeled_impressions(world) if labeled is None else labeled
    events: list[SyntheticEvent] = []
    n = 0

    def jitter() -> int:
        return int(rng.exponential(50.0))

    for li in labeled:
        imp = li.impression
        t0 = imp["event_time"]
        events.append(SyntheticEvent(IMPRESSION, imp["member_id"], t0 + jitter(), record=imp))
        if li.clicked:
            late = rng.random() < spec.late_rate
            delay = (
                spec.attribution_window_ms + int(rng.integers(1, 60_000))
                if late
                else int(rng.exponential(spec.mean_click_delay_ms)) + 1
            )
            events.append(
                SyntheticEvent(
                    INTERACTION,
                    imp["member_id"],
                    t0 + delay + jitter(),
                    record=_interaction(imp, n, "CLICK", t0 + delay),
                )
            )
            n += 1
            if li.applied and not late:
                apply_delay = min(delay + int(rng.exponential(120_000)) + 1, spec.attribution_window_ms - 1)
                events.append(
                    SyntheticEvent(
                        INTERACTION,
                        imp["member_id"],
                        t0 + apply_delay + jitter(),
                        record=_interaction(imp, n, "APPLY", t0 + apply_delay),
                    )
                )
                n += 1
        elif rng.random() < 0.05:
            events.append(
                SyntheticEvent(
                    INTERACTION,
                    imp["member_id"],
                    t0 + 2_000 + jitter(),
                    record=_interaction(imp, n, "DISMISS", t0 + 2_000),
                )
            )
            n += 1

    clean = len(events)
    for i in rng.choice(clean, size=int(spec.duplicate_rate * clean), replace=False) if clean else []:
        original = events[int(i)]
        events.append(
            SyntheticEvent(
                original.kind, original.key, original.arrival_ms + int(rng.integers(1, 5_000)), record=original.record
            )
        )
    for i in rng.choice(clean, size=int(spec.out_of_order_rate * clean), replace=False) if clean else []:
        original = events[int(i)]  # arrives up to a minute after its neighbours
        events[int(i)] = SyntheticEvent(
            original.kind, original.key, original.arrival_ms + int(rng.integers(1_000, 60_000)), record=original.record
        )
    for _ in range(int(spec.orphan_rate * clean)):
        member = world.members[int(rng.integers(len(world.members)))]
        t = spec.start_time_ms + int(rng.integers(0, max(1, spec.requests * spec.mean_request_gap_ms)))
        orphan = {"impression_id": f"imp-orphan-{n:08d}", "member_id": member.entity_id, "item_id": None}
        events.append(SyntheticEvent(INTERACTION, member.entity_id, t, record=_interaction(orphan, n, "CLICK", t)))
        n += 1
    for j in range(int(spec.malformed_rate * clean)):
        events.append(_malformed(rng, labeled[int(rng.integers(len(labeled)))].impression, j))
    events.sort(key=lambda e: e.arrival_ms)
    return iter([replace(e, malformed=bad) for e, bad in zip(events, _malformed_flags(events), strict=True)])


def _malformed(rng: np.random.Generator, imp: dict[str, Any], j: int) -> SyntheticEvent:
    """A bad record of one of four kinds: random bytes, a cut-off value, a NaN feature, no member id."""
    kind = _MALFORMED_KINDS[j % len(_MALFORMED_KINDS)]
    arrival = imp["event_time"] + int(rng.integers(0, 1_000))
    if kind == "garbage":
        return SyntheticEvent(IMPRESSION, imp["member_id"], arrival, raw=rng.bytes(int(rng.integers(1, 64))))
    if kind == "truncated":
        return SyntheticEvent(IMPRESSION, imp["member_id"], arrival, record=imp, truncated=True)
    bad = dict(imp, impression_id=f"{imp['impression_id']}-bad{j}")
    if kind == "nan_feature":
        bad["features"] = {
            **imp["features"],
            "member_seniority": [{"name": "member_seniority", "term": "", "value": float("nan")}],
        }
    else:
        bad["member_id"] = ""
    return SyntheticEvent(IMPRESSION, imp["member_id"], arrival, record=bad)
