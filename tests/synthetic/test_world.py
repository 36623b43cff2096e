"""The synthetic world: deterministic per seed, Alice/Annie twins, noise at the configured shares."""

from __future__ import annotations

from collections import Counter

import pytest

from stream.config import ConfigError
from stream.synthetic import IMPRESSION, INTERACTION, World, WorldSpec, event_stream, labeled_impressions

SPEC = WorldSpec(seed=11, members=60, jobs=40, requests=400, duplicate_rate=0.05, out_of_order_rate=0.05,
                 late_rate=0.1, orphan_rate=0.02, malformed_rate=0.04)


def test_same_seed_same_events_other_seed_other_events():
    first, second = list(event_stream(World(SPEC))), list(event_stream(World(SPEC)))
    assert repr(first) == repr(second)  # repr: NaN features (malformed on purpose) compare equal
    other = list(event_stream(World(WorldSpec(**{**SPEC.__dict__, "seed": 12}))))
    assert other != first


def test_alice_and_annie_share_features_but_not_tastes():
    world = World(SPEC)
    by_id = {m.entity_id: m for m in world.members}
    for alice, annie in world.truth.alice_annie:
        assert by_id[alice].bags == by_id[annie].bags
        liked = ("job_title", world.truth_liked_title(int(alice.split("-")[1])))
        assert world.truth.member_effects[alice][liked] == -world.truth.member_effects[annie][liked] == 2.0


def test_noise_appears_at_the_configured_shares():
    world = World(SPEC)
    labeled = labeled_impressions(world)
    events = list(event_stream(world, labeled))
    quiet = WorldSpec(**{**SPEC.__dict__, "duplicate_rate": 0.0, "out_of_order_rate": 0.0, "orphan_rate": 0.0, "malformed_rate": 0.0})
    clean = len(list(event_stream(World(quiet))))
    shown_at = {li.impression["impression_id"]: li.impression["event_time"] for li in labeled}

    records = Counter(repr(sorted(e.record.items())) for e in events if e.record and not e.malformed)
    assert sum(c - 1 for c in records.values()) == int(SPEC.duplicate_rate * clean)

    orphans = [e for e in events if e.kind == INTERACTION and e.record["impression_id"] not in shown_at]
    assert len(orphans) == int(SPEC.orphan_rate * clean)

    malformed = [e for e in events if e.malformed]
    assert len(malformed) == int(SPEC.malformed_rate * clean)
    assert {"raw", "truncated", "record"} == {"raw" if e.raw else "truncated" if e.truncated else "record" for e in malformed}

    late = [e for e in events if e.kind == INTERACTION and e.record["impression_id"] in shown_at
            and e.record["event_time"] - shown_at[e.record["impression_id"]] > SPEC.attribution_window_ms]
    assert late

    newest, out_of_order = 0, 0
    for e in events:
        if e.record and not e.malformed:
            out_of_order += e.record["event_time"] < newest - 1_000
            newest = max(newest, e.record["event_time"])
    assert out_of_order > 0
    assert sum(e.kind == IMPRESSION and not e.malformed for e in events) >= len(labeled)


def test_clicks_follow_the_true_model():
    labeled = labeled_impressions(World(WorldSpec(seed=5, requests=3000)))
    hi = [li.clicked for li in labeled if li.true_margin > 1.0]
    lo = [li.clicked for li in labeled if li.true_margin < -2.0]
    assert sum(hi) / len(hi) > 0.7 and sum(lo) / len(lo) < 0.15


def test_bad_spec_names_the_field():
    with pytest.raises(ConfigError, match="malformed_rate"):
        WorldSpec(malformed_rate=1.5)
