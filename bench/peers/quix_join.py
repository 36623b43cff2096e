"""The joiner's join as a Quix Streams app: impressions + interactions -> one labeled example per impression.

Run by bench/join_peers.py in the peers' virtualenv (Quix Streams 3.28.1: RocksDB state with changelog topics,
``--guarantee`` at-least-once or exactly-once). Both topics are decoded (fastavro, the packaged schemas) with the
event time as the record timestamp and concatenated (Quix then reads partition p of both aligned by timestamp), then
re-keyed by impression id and windowed: hopping windows of two attribution windows every attribution window, per
impression id, closed on each partition's watermark (``closing_strategy="partition"``), with the allowed lateness as
grace. An impression at t is in the windows starting at floor(t / W)·W and one W before; the first of these holds
[t, t + W], every interaction that can label it, and emits its example at its close.

Why so. Quix windows are per message key, and the rule needs a window per impression. Quix's public ``group_by``
re-keys through a repartition topic, and reading a backlog through it dropped half the events as late (2,141 of
4,326 in the quick run): Quix aligns only partitions of the same number and drains partition groups one after
another, so each repartition partition's watermark ran to the end of the stream with the first source partition.
The inputs are co-partitioned by member, so this app re-keys in place (Quix's own single-partition ``group_by``
path, ``_single_partition_groupby``): the state stays in the source partition, as the joiner's does. Session
windows per impression (gap W) gave the same labels but closed on the partition by sweeping every open key on
almost every record: 270 events/s.

The rule is stream/consumers/join_state.py's as these windows allow: an interaction counts when its event time is at
most ``attribution_window_ms`` after its impression's; the labels come from the interaction types (the highest wins,
none is 0); one example per impression (duplicates land in its windows and are dropped there), with the joiner's
label time (the window's end). The watermark is the partition's largest event time over both topics (the joiner's
is the smaller input's), so windows near the end of the input close that the joiner keeps open. An event below the
watermark minus the grace is dropped as late (counted); windows without an impression (orphans) emit nothing.
Early positives (off by default in the joiner) are not offered. Nothing is indexed or scored, nor dead-lettered.
"""

from __future__ import annotations

import sys
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows.aggregations import Aggregator
from quixstreams.models.serializers import Deserializer

from peer_common import Progress, Rules, SingleObjectReader, arguments, example, ready


class AvroSingleObject(Deserializer):
    """A topic's values: the project's Avro single-object records, decoded by fastavro."""

    def __init__(self, reader: SingleObjectReader) -> None:
        super().__init__()
        self._reader = reader

    def __call__(self, value: bytes, ctx: Any) -> dict[str, Any]:
        return self._reader.decode(value)


class ImpressionJoin(Aggregator):
    """A window's impression (the first, duplicates dropped) and its interactions; at the close, its example."""

    def __init__(self, rules: Rules, symbols: list[str]) -> None:
        super().__init__()
        self._rules = rules
        self._symbols = symbols

    def initialize(self) -> dict[str, Any]:
        return {"i": None, "x": []}

    def agg(self, old: dict[str, Any], new: dict[str, Any], timestamp: int) -> dict[str, Any]:
        if new["k"] == "x":
            old["x"].append((new["t"], new["c"]))
        elif old["i"] is None:
            old["i"] = new["r"]
        return old

    def result(self, value: dict[str, Any]) -> dict[str, Any] | None:
        impression = value["i"]
        if impression is None:
            return None  # orphan interactions
        t, window = impression["event_time"], self._rules.window_ms
        label, types = 0.0, 0
        for event_time, code in value["x"]:
            if event_time - t > window:
                continue  # late: outside the attribution window
            types |= 1 << code
            label = max(label, self._rules.labels.get(code, 0.0))
        names = [s for code, s in enumerate(self._symbols) if types >> code & 1]
        return example(impression, label, t + window, names)


class ReportingApplication(Application):
    """Quix's Application, saying on stderr when the consumer holds its partitions (the benchmark starts the data)."""

    def _on_assign(self, consumer: Any, topic_partitions: list) -> None:
        super()._on_assign(consumer, topic_partitions)
        if topic_partitions:
            ready(f"{len(topic_partitions)} partitions")


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    impressions = SingleObjectReader(args.schemas, "Impression")
    interactions = SingleObjectReader(args.schemas, "Interaction")
    symbols = interactions.symbols("type")
    rules = Rules.parse(args.rules, symbols)
    if rules.early_positives:
        sys.exit("quix: early positives are not offered (a window emits at its close)")
    if args.guarantee == "none":
        sys.exit("quix: choose at-least-once or exactly-once")
    progress = Progress(args.expect)

    def event_time(value: dict[str, Any], headers: Any, timestamp: int, timestamp_type: Any) -> int:
        return value["event_time"]

    app = ReportingApplication(broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
                               processing_guarantee=args.guarantee, state_dir=args.state_dir, loglevel="WARNING")
    imp_topic = app.topic(args.impressions, value_deserializer=AvroSingleObject(impressions),
                          timestamp_extractor=event_time)
    int_topic = app.topic(args.interactions, value_deserializer=AvroSingleObject(interactions),
                          timestamp_extractor=event_time)
    out_topic = app.topic(args.output, key_serializer="str", value_serializer="json")

    imps = app.dataframe(imp_topic).apply(lambda r: {"k": "i", "id": r["impression_id"], "r": r})
    ints = app.dataframe(int_topic).apply(
        lambda r: {"k": "x", "id": r["impression_id"], "t": r["event_time"], "c": symbols.index(r["type"])})
    events = imps.concat(ints)._single_partition_groupby("impression-id", "id")

    def took(_: Any) -> None:
        progress.took()

    def late(*_: Any) -> bool:
        progress.late += 1
        return False  # counted, not logged one by one

    window = rules.window_ms

    def emitted(closed: dict[str, Any]) -> dict[str, Any] | None:
        """The example of an impression from the one of its two windows that starts at or before it by < a window."""
        found = closed["join"]
        if found is None or closed["start"] != found["event_time"] // window * window:
            return None
        progress.examples += 1
        return found

    examples = (events.update(took)
                .hopping_window(duration_ms=2 * window, step_ms=window, grace_ms=rules.lateness_ms, name="join",
                                on_late=late)
                .agg(join=ImpressionJoin(rules, symbols)).final(closing_strategy="partition")
                .apply(emitted).filter(lambda e: e is not None))
    examples.to_topic(out_topic, key=lambda e: e["member_id"])
    app.run()


if __name__ == "__main__":
    main()
