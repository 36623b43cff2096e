"""The attribution-window join of one partition, on a RocksDB store on disk, with hand-made events."""

from __future__ import annotations

import pytest

from stream.consumers.join_state import (
    IMPRESSIONS,
    INTERACTIONS,
    ImpressionEvent,
    InteractionEvent,
    JoinBatch,
    JoinRules,
)
from stream.state.partition_store import PartitionStore

CLICK, APPLY, SAVE, DISMISS = 1, 2, 3, 4
W, LATE = 1_000, 200


@pytest.fixture
def store(tmp_path):
    s = PartitionStore(tmp_path / "join")
    yield s
    s.close()


def _rules(early=False) -> JoinRules:
    return JoinRules(W, LATE, {CLICK: 1.0, APPLY: 1.0, SAVE: 0.5}, retention_ms=3 * W, early_positives=early)


def _batch(store, rules, events, idle=frozenset()):
    """Run one batch of events through a JoinBatch and write it; returns its result."""
    ids = [e.impression_id for e in events]
    batch = JoinBatch(store, rules, ids)
    for e in events:
        if isinstance(e, ImpressionEvent):
            batch.add_impression(e)
        else:
            batch.add_interaction(e)
    batch.close_windows(idle)
    batch.write({})
    return batch.result


def imp(i: str, t: int) -> ImpressionEvent:
    return ImpressionEvent(i, t, f"example-{i}".encode())


def act(i: str, t: int, kind: int = CLICK) -> InteractionEvent:
    return InteractionEvent(i, t, kind, f"raw-{i}-{t}".encode(), b"member")


def _labels(results) -> dict[bytes, float]:
    return {e.example: e.label for r in results for e in r.emissions}


def test_labels_follow_the_window_and_wait_for_the_watermark(store):
    rules = _rules()
    first = _batch(store, rules, [imp("a", 0), imp("b", 100), imp("c", 200), act("a", 900), act("b", 1_101 + 100),
                                  act("c", 300, SAVE)])
    assert first.emissions == []  # watermark min(200, 1201) - 200 = 0: no window (ending 1000..1200) closed
    later = _batch(store, rules, [imp("d", 1_500), act("d", 1_600, DISMISS)])
    assert _labels([later]) == {b"example-a": 1.0, b"example-b": 0.0, b"example-c": 0.5}  # watermark 1300
    end = _batch(store, rules, [imp("e", 3_000), act("e", 3_000, DISMISS)])
    assert _labels([end]) == {b"example-d": 0.0}  # d's window ends at 2500 < 2800; e's is still open
    assert first.counts.late_interactions == 1  # b's click came 1101 ms after the impression


def test_duplicates_are_ignored_and_out_of_order_clicks_wait_for_their_impression(store):
    rules = _rules()
    early = _batch(store, rules, [act("a", 50), imp("a", 0), imp("a", 0), act("a", 50)])
    assert early.counts.held_interactions == 1 and early.counts.duplicate_impressions == 1
    end = _batch(store, rules, [imp("z", 5_000), act("z", 5_000, DISMISS)])
    labels = _labels([early, end])
    assert labels == {b"example-a": 1.0}


def test_orphans_are_given_up_once_the_watermark_passes_them(store):
    rules = _rules()
    held = _batch(store, rules, [act("ghost", 100), imp("x", 0), act("x", 10, DISMISS)])
    assert held.orphans == []
    end = _batch(store, rules, [imp("y", 400), act("y", 400, DISMISS)])
    assert [o.raw for o in end.orphans] == [b"raw-ghost-100"]


def test_interactions_after_emission_are_counted_and_markers_expire(store):
    rules = _rules()
    _batch(store, rules, [imp("a", 0), act("a", 0, DISMISS)])
    closed = _batch(store, rules, [imp("b", 1_300), act("b", 1_300, DISMISS)])
    assert _labels([closed]) == {b"example-a": 0.0}
    late = _batch(store, rules, [act("a", 1_400), imp("a", 0)])
    assert late.counts.late_interactions == 1 and late.counts.duplicate_impressions == 1
    _batch(store, rules, [imp("c", 5_000), act("c", 5_000, DISMISS)])  # a's marker (until 3000) is gone now
    assert store.count(b"xa") == 0 and store.count(b"pa") == 0


def test_early_positives_are_emitted_at_the_click(store):
    rules = _rules(early=True)
    result = _batch(store, rules, [imp("a", 0), act("a", 10, SAVE), act("a", 20, CLICK)])
    assert [(e.example, e.label, e.label_time, e.eager) for e in result.emissions] == [(b"example-a", 1.0, 20, True)]
    again = _batch(store, rules, [act("a", 30, APPLY)])
    assert again.emissions == [] and again.counts.after_emission_interactions == 1


def test_the_watermark_follows_the_slower_input_unless_it_is_idle(store):
    rules = _rules()
    only_impressions = _batch(store, rules, [imp("a", 0), imp("b", 5_000)])
    assert only_impressions.emissions == []  # interactions have said nothing yet: a's window may still get a click
    idle = _batch(store, rules, [], idle=frozenset({INTERACTIONS}))
    assert _labels([idle]) == {b"example-a": 0.0}
    assert IMPRESSIONS != INTERACTIONS


def test_the_watermark_never_goes_back_when_an_idle_input_delivers_again(store):
    """Windows closed while interactions were idle stay closed: an impression whose deadline is below that close
    is emitted at once, not left below the deadline scan (it was lost that way when joiners restarted)."""
    rules = _rules()
    _batch(store, rules, [act("early", 0)])
    closed = _batch(store, rules, [imp("x", 10_000)], idle=frozenset({INTERACTIONS}))
    assert not closed.emissions  # its window is open: the watermark is 10_000 - LATE
    _batch(store, rules, [act("y-click", 1_000)])  # interactions deliver again, far behind
    late = _batch(store, rules, [imp("z", 8_000)])  # deadline 9_000, below the last close (9_800)
    assert [e.example for e in late.emissions] == [b"example-z"]
    assert JoinBatch(store, rules, []).watermark() == 10_000 - LATE


def test_pending_impressions_survive_reopening_the_store(tmp_path):
    rules = _rules()
    first = PartitionStore(tmp_path / "s")
    _batch(first, rules, [imp("a", 0), act("a", 10)])
    first.close()
    second = PartitionStore(tmp_path / "s")
    result = _batch(second, rules, [imp("z", 5_000), act("z", 5_000, DISMISS)])
    second.close()
    assert _labels([result]) == {b"example-a": 1.0}
