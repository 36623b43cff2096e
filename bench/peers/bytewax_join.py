"""The joiner's join as a Bytewax dataflow: impressions + interactions -> one labeled example per impression.

Run by bench/join_peers.py in the peers' virtualenv (Bytewax 0.21.1, its Rust engine, one worker). The rule is
stream/consumers/join_state.py's, per Kafka partition (both topics are keyed by member and co-partitioned): an
interaction labels its impression when its event time is at most ``attribution_window_ms`` after the impression's;
the labels come from the interaction types (the highest wins, none is 0); a window closes when the partition's
watermark (the smaller of the two inputs' largest event times, minus ``allowed_lateness_ms``) passes its end, and
the impression is emitted then (or at once, with ``early_positives``, on the highest label); an interaction that
came before its impression waits for it until the watermark passes the interaction; an emitted impression is
remembered for ``emitted_retention_ms`` to drop its duplicates. Nothing is indexed or scored, and nothing is
dead-lettered.

Why not Bytewax's windowing operators: their event clock is one per worker, over every partition of both topics,
and the Kafka source reads its partitions in turns of up to ``batch_size`` records each, whatever their event time.
Reading a backlog, the interactions' partitions (fewer records per second of event time) run hundreds of seconds
of event time ahead of the impressions', so a window clock with the joiner's lateness closes windows before their
clicks are read. A stateful step keyed by partition keeps the joiner's per-partition, slower-input watermark; its
state is snapshotted at every epoch into Bytewax's SQLite recovery store (``--guarantee at-least-once``; ``none``:
no recovery).
"""

from __future__ import annotations

import heapq
import pickle
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from bytewax import operators as op
from bytewax._bytewax import cli_main
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.recovery import RecoveryConfig, init_db_dir
from confluent_kafka import OFFSET_BEGINNING

from peer_common import Progress, Rules, SingleObjectReader, arguments, example, ready

NEVER = -(1 << 62)
PENDING, EMITTED, HELD = 0, 1, 2


class PartitionJoin:
    """One partition's join state: pending impressions, emitted ones remembered, interactions waiting, deadlines."""

    def __init__(self, rules: Rules, symbols: list[str]) -> None:
        self.rules = rules
        self.symbols = symbols
        self.max_impression = self.max_interaction = NEVER
        self.closed_through = NEVER
        self.pending: dict[str, list[Any]] = {}  # id -> [event time, deadline, label, type bits, impression]
        self.emitted: dict[str, int] = {}  # id -> event time
        self.held: dict[str, list[tuple[int, int]]] = {}  # id -> [(event time, type code)]
        self.deadlines: list[tuple[int, int, str]] = []  # (deadline, kind, id), a heap

    def watermark(self) -> int:
        newest = min(self.max_impression, self.max_interaction)
        return max(newest - self.rules.lateness_ms, self.closed_through)

    def impression(self, record: dict[str, Any], out: list) -> None:
        iid, t = record["impression_id"], record["event_time"]
        if iid in self.pending or iid in self.emitted:
            return  # a duplicate
        self.max_impression = max(self.max_impression, t)
        entry = [t, t + self.rules.window_ms, 0.0, 0, record]
        label_time = t
        held = self.held.pop(iid, None)
        if held is not None:
            for event_time, code in sorted(held):
                self._apply(entry, code, event_time)
            label_time = max(event_time for event_time, _ in held)
        if entry[1] < self.watermark():  # its window closed before it arrived
            self._emit(iid, entry, entry[1], out)
        elif not self._emit_if_final(iid, entry, label_time, out):
            self.pending[iid] = entry
            heapq.heappush(self.deadlines, (entry[1], PENDING, iid))

    def interaction(self, record: dict[str, Any], out: list) -> None:
        iid, t = record["impression_id"], record["event_time"]
        self.max_interaction = max(self.max_interaction, t)
        code = self.symbols.index(record["type"])
        entry = self.pending.get(iid)
        if entry is not None:
            if t - entry[0] <= self.rules.window_ms:
                self._apply(entry, code, t)
                if self._emit_if_final(iid, entry, t, out):
                    del self.pending[iid]
            return
        if iid in self.emitted:
            return  # late, or after its impression was emitted
        self.held.setdefault(iid, []).append((t, code))
        heapq.heappush(self.deadlines, (t, HELD, iid))

    def _apply(self, entry: list[Any], code: int, t: int) -> None:
        if t - entry[0] > self.rules.window_ms:
            return
        entry[3] |= 1 << code
        label = self.rules.labels.get(code)
        if label is not None and label > entry[2]:
            entry[2] = label

    def _emit_if_final(self, iid: str, entry: list[Any], label_time: int, out: list) -> bool:
        if not self.rules.early_positives or entry[2] < max(self.rules.labels.values()):
            return False
        self._emit(iid, entry, label_time, out)
        return True

    def _emit(self, iid: str, entry: list[Any], label_time: int, out: list) -> None:
        types = [s for code, s in enumerate(self.symbols) if entry[3] >> code & 1]
        out.append(example(entry[4], entry[2], label_time, types))
        self.emitted[iid] = entry[0]
        heapq.heappush(self.deadlines, (entry[0] + self.rules.retention_ms, EMITTED, iid))

    def close_windows(self, out: list) -> None:
        """Emit the impressions whose windows the watermark passed; forget old ones; give up on orphans."""
        limit = self.watermark()
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] < limit:
            deadline, kind, iid = heapq.heappop(deadlines)
            if kind == PENDING:
                entry = self.pending.get(iid)
                if entry is not None and entry[1] == deadline:
                    del self.pending[iid]
                    self._emit(iid, entry, deadline, out)
            elif kind == EMITTED:
                if self.emitted.get(iid) == deadline - self.rules.retention_ms:
                    del self.emitted[iid]
            else:
                self.held.pop(iid, None)  # an orphan: no impression came in time
        self.closed_through = max(self.closed_through, limit)


class JoinLogic(StatefulBatchLogic):
    """The stateful step of one partition: a batch of its (kind, record) events in, its examples out."""

    def __init__(self, state: PartitionJoin, progress: Progress) -> None:
        self.state = state
        self.progress = progress

    def on_batch(self, values: list) -> tuple[list, bool]:
        out: list = []
        state = self.state
        for kind, record in values:
            if kind == "i":
                state.impression(record, out)
            else:
                state.interaction(record, out)
        state.close_windows(out)
        self.progress.examples += len(out)
        self.progress.took(len(values))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


class ReportingKafkaSource(KafkaSource):
    """Bytewax's Kafka source, saying on stderr when it holds each partition (the benchmark starts the data then)."""

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
        part = super().build_part(step_id, for_part, resume_state)
        ready(for_part)
        return part


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    impressions = SingleObjectReader(args.schemas, "Impression")
    interactions = SingleObjectReader(args.schemas, "Interaction")
    symbols = interactions.symbols("type")
    rules = Rules.parse(args.rules, symbols)
    progress = Progress(args.expect)
    kinds = {args.impressions: ("i", impressions), args.interactions: ("x", interactions)}

    def decode(message: Any) -> tuple[str, tuple[str, dict[str, Any]]]:
        kind, reader = kinds[message.topic]
        return str(message.partition), (kind, reader.decode(message.value))

    def encode(item: tuple[str, dict[str, Any]]) -> KafkaSinkMessage:
        record = item[1]
        return KafkaSinkMessage(record["member_id"].encode(), orjson.dumps(record))

    def build(resume: bytes | None) -> JoinLogic:
        return JoinLogic(pickle.loads(resume) if resume is not None else PartitionJoin(rules, symbols), progress)

    flow = Dataflow("glmix-join-peer")
    source = ReportingKafkaSource([args.bootstrap], [args.impressions, args.interactions], tail=True,
                                  starting_offset=OFFSET_BEGINNING)
    events = op.map("decode", op.input("events", flow, source), decode)
    examples = op.stateful_batch("join", events, build)
    op.output("examples", op.map("encode", examples, encode), KafkaSink([args.bootstrap], args.output))
    recovery = None
    if args.guarantee != "none":
        if args.guarantee == "exactly-once":
            sys.exit("bytewax: its Kafka sink is at-least-once; exactly-once is not offered")
        db = Path(args.state_dir) / "recovery"
        db.mkdir(parents=True, exist_ok=True)
        init_db_dir(db, 1)
        recovery = RecoveryConfig(db)
    cli_main(flow, workers_per_process=1, epoch_interval=timedelta(seconds=10), recovery_config=recovery)


if __name__ == "__main__":
    main()
