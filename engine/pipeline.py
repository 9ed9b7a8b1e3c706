"""The pipeline: the stages every batch goes through, and `replay` around it.

Stages run once per batch, never per packet: decap -> parse -> fragment reassembly
(and parse of what it completed) -> flows -> names (l7) -> decide -> return path;
replay adds the capture reader in front and the pcap writers behind.  The decision is
rules.match over a compiled policy, or allow-all when none is given.  Every stage's
time is accumulated per batch (VPP's `show runtime`), so the stats say where the time
goes.

The kernels from the reader to the decision are compiled with `_nrt=False` (no numba
runtime): they allocate nothing, and without the runtime numba emits no reference
counting, which otherwise costs an atomic increment and decrement per array each time
a kernel calls a helper with a tuple of arrays (the policy's tables are 46): it was
most of the decide stage's time.
`engine.tables` puts the per-flow tables in transparent huge pages.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from egressd.engine.actions import Actions
from egressd.engine.batch import PacketBatch
from egressd.engine.eve import EVE_TYPES, EveWriter
from egressd.engine.flows import END_NAMES, STATE_NAMES, FlowConfig, FlowTable
from egressd.engine.frag import FragConfig, FragTable
from egressd.engine.l7 import L7Config, L7Table
from egressd.engine.parse import parse, reparse
from egressd.engine.pcapio import DEFAULT_BATCH_PACKETS, CaptureReader, PcapWriter
from egressd.engine.reasons import N_REASONS, NAMES, STAGES, Verdict
from egressd.geneve.decap import decap
from egressd.geneve.encap import return_inplace
from egressd.rules.compile import CompiledPolicy
from egressd.rules.match import PolicyStage
from egressd.rules.policy import Origin

ProgressFn = Callable[[int], None]
T = TypeVar("T")


def _allow_all(b: PacketBatch) -> None:
    v = b.verdict[:b.n]
    v[v == Verdict.PENDING] = Verdict.PASS


_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}


class FlowSummary:
    """Totals over ended flows (the stats JSON's `flows`), fed flow records."""

    def __init__(self) -> None:
        self.by_protocol: dict[str, int] = {}
        self.ended: dict[str, int] = {}
        self.tcp_final_state: dict[str, int] = {}
        self.packets = {"toserver": 0, "toclient": 0}
        self.bytes = {"toserver": 0, "toclient": 0}

    def add(self, recs: np.ndarray) -> None:
        if not len(recs):
            return
        for table, values, name in ((self.by_protocol, recs["proto"], lambda v: _PROTO_NAMES.get(v, str(v))),
                                    (self.ended, recs["reason"], lambda v: END_NAMES[v]),
                                    (self.tcp_final_state, recs["state"][recs["proto"] == 6],
                                     lambda v: STATE_NAMES[v])):
            for v, c in zip(*np.unique(values, return_counts=True)):
                key = name(int(v))
                table[key] = table.get(key, 0) + int(c)
        for d in ("toserver", "toclient"):
            self.packets[d] += int(recs[f"pkts_{d}"].sum())
            self.bytes[d] += int(recs[f"bytes_{d}"].sum())

    def to_dict(self, counters: dict[str, int]) -> dict:
        return {**counters, "by_protocol": self.by_protocol, "ended": self.ended,
                "tcp_final_state": self.tcp_final_state, "packets": self.packets,
                "bytes": self.bytes}


class Pipeline:
    """Stage state (fragment and flow tables), drop counters and per-stage time.

    `process(b, base)` runs every stage over batch `b`, whose buffer holds the
    fragment slabs from offset `base` on (`extra_bytes` of them); `finish()` ends the
    flows still open.
    """

    def __init__(self, require_gwlb: bool = True, frag: FragConfig | None = None,
                 flows: FlowConfig | None = None, l7: L7Config | None = None,
                 policy: CompiledPolicy | None = None) -> None:
        self.require_gwlb = require_gwlb
        self.frags = FragTable(frag)
        self.flows = FlowTable(flows)
        self.l7 = L7Table(self.flows.config.capacity, l7)
        self.policy = PolicyStage(policy, self.flows.config.capacity) if policy else None
        self.actions = Actions(policy) if policy else None
        self.l7.decrypt_quic = policy is None or policy.reads_quic_names
        self.created: PacketBatch | None = None   # packets the last batch made egressd send
        self._eve: EveWriter | None = None
        self.flow_summary = FlowSummary()
        self.counts = np.zeros(N_REASONS, np.uint64)
        self.stage_ns: dict[str, int] = {}

    def set_policy(self, policy: CompiledPolicy) -> None:
        """Decide with `policy` from the next batch on (a reload): flows, names and
        fragments keep their state; the per-flow decisions start afresh, so every flow
        is judged again on its next packet."""
        self.policy = PolicyStage(policy, self.flows.config.capacity)
        self.actions = Actions(policy)
        self.l7.decrypt_quic = self.eve is not None or policy.reads_quic_names

    @property
    def eve(self) -> EveWriter | None:
        return self._eve

    @eve.setter
    def eve(self, writer: EveWriter | None) -> None:
        self._eve = writer
        if writer is not None:
            self.l7.decrypt_quic = True   # the log names QUIC flows' servers

    @property
    def extra_bytes(self) -> int:
        return self.frags.config.pool_bytes

    def timed(self, name: str, fn: Callable[[], T]) -> T:
        """fn(), its time added to stage `name`."""
        t0 = time.perf_counter_ns()
        result = fn()
        self.stage_ns[name] = self.stage_ns.get(name, 0) + time.perf_counter_ns() - t0
        return result

    def process(self, b: PacketBatch, base: int) -> None:
        c = self.counts
        self.timed("decap", lambda: decap(b, c, self.require_gwlb))
        self.timed("parse", lambda: parse(b, c))
        self.timed("reassemble", lambda: (self.frags.reassemble(b, base, c), reparse(b, c)))
        self.timed("flows", lambda: (self.flows.track(b), self._ended(self.flows.drain_records())))
        self.timed("names", lambda: self.l7.extract(b, self.flows.slots["flow_id"]))
        if self.policy:
            self.timed("decide", lambda: self.policy.decide(b, self.flows, self.l7, c))
            self.created = self.timed("act", lambda: self.actions.run(b))
        else:
            self.timed("decide", lambda: _allow_all(b))
        self.timed("return", lambda: (return_inplace(b),
                                      self.created is not None and return_inplace(self.created)))
        if self.eve:
            self.timed("eve", lambda: self.eve.batch(b))

    def _ended(self, recs: np.ndarray) -> None:
        self.flow_summary.add(recs)
        if self.eve:
            self.eve.flows(recs)

    def finish(self) -> None:
        """End every flow still open (the end of a capture, or a shutdown)."""
        for recs in self.flows.flush():
            self._ended(recs)


# The layer each policy drop reason belongs to (the Origin.layer of the rules that give
# it): the stats count drops by layer, policy reasons by theirs, the others by stage.
REASON_LAYER: dict[str, str] = {
    "nacl_deny": "nacl", "egress_only": "egress_only", "security_group": "security_group",
    "dns_firewall_block": "dns_firewall", "stateless_drop": "stateless",
    "stateless_default_drop": "stateless", "stateful_drop": "stateful",
    "stateful_reject": "stateful", "stateful_default_drop": "stateful",
    "ech_offered": "engine", "sni_not_resolved": "engine"}
assert set(REASON_LAYER) == {n for n, s in zip(NAMES, STAGES) if s == "policy"}, \
    "a policy reason without a layer"


def layer_of(reason: int) -> str:
    """The layer a drop reason is counted under: its policy layer, else its stage."""
    return REASON_LAYER.get(NAMES[reason], STAGES[reason])


TOP_RULES = 20


@dataclass
class ReplayStats:
    """What a replay did; `to_dict()` is the stats JSON."""

    input: str
    forwarded_path: str
    dropped_path: str | None
    reason_counts: np.ndarray = field(default_factory=lambda: np.zeros(N_REASONS, np.uint64))
    packets_in: int = 0
    bytes_in: int = 0
    packets_forwarded: int = 0
    bytes_forwarded: int = 0
    bytes_dropped: int = 0
    dropped_unwritable: int = 0
    batches: int = 0
    elapsed_s: float = 0.0
    capture: dict = field(default_factory=dict)
    fragments: dict = field(default_factory=dict)
    flows: dict = field(default_factory=dict)
    names: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    stage_ns: dict = field(default_factory=dict)
    rule_hits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # per catalog id
    catalog: list[Origin] = field(default_factory=list)

    @property
    def packets_dropped(self) -> int:
        return int(self.reason_counts[1:].sum())

    def top_rules(self, k: int = TOP_RULES) -> list[dict]:
        """The `k` rules with the most hits (packets they decided), most first, with
        where each was written."""
        hits = self.rule_hits.astype(np.int64)
        out = []
        for j in np.argsort(-hits, kind="stable")[:k]:
            if hits[j]:
                o = self.catalog[j]
                out.append({"layer": o.layer, "group": o.group, "rule": o.ident, "hits": int(hits[j]),
                            "file": o.file, "line": o.line, "text": o.text})
        return out

    def to_dict(self) -> dict:
        drops = {NAMES[r]: int(c) for r, c in enumerate(self.reason_counts) if r and c}
        by_stage: dict[str, int] = {}
        by_layer: dict[str, int] = {}
        for r, c in enumerate(self.reason_counts):
            if r and c:
                by_stage[STAGES[r]] = by_stage.get(STAGES[r], 0) + int(c)
                by_layer[layer_of(r)] = by_layer.get(layer_of(r), 0) + int(c)
        per_packet = max(self.packets_in, 1)
        return {
            "input": {"path": self.input, **self.capture},
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "packets_forwarded": self.packets_forwarded,
            "bytes_forwarded": self.bytes_forwarded,
            "packets_dropped": self.packets_dropped,
            "bytes_dropped": self.bytes_dropped,
            "drops": drops,
            "drops_by_stage": by_stage,
            "drops_by_layer": by_layer,
            "fragments": self.fragments,
            "flows": self.flows,
            "names": self.names,
            "policy": self.policy,
            "top_rules": self.top_rules(),
            "outputs": {"forwarded": self.forwarded_path, "dropped": self.dropped_path,
                        "dropped_not_written": self.dropped_unwritable},
            "batches": self.batches,
            "elapsed_s": round(self.elapsed_s, 6),
            "packets_per_s": round(self.packets_in / self.elapsed_s) if self.elapsed_s > 0 else None,
            "stages": {name: {"seconds": round(ns / 1e9, 6), "ns_per_packet": round(ns / per_packet, 1)}
                       for name, ns in self.stage_ns.items()},
        }


def replay(inp: str | Path, out: str | Path, dropped: str | Path | None = None,
           require_gwlb: bool = True, batch_packets: int = DEFAULT_BATCH_PACKETS,
           frag: FragConfig | None = None, flows: FlowConfig | None = None,
           policy: CompiledPolicy | None = None, eve: str | Path | None = None,
           eve_types: frozenset[str] | None = None,
           progress: ProgressFn | None = None) -> ReplayStats:
    """Replay capture `inp`; write returned packets to `out` (and drops to `dropped`).

    `progress(bytes_read)` is called after every batch.  Raises CaptureError for a
    capture that cannot be read or an output that cannot be written; outputs are
    only put in place when the whole capture was processed.
    """
    stats = ReplayStats(str(inp), str(out), str(dropped) if dropped else None)
    start = time.perf_counter()
    pipe = Pipeline(require_gwlb, frag, flows, policy=policy)
    with CaptureReader(inp, batch_packets=batch_packets, extra_bytes=pipe.extra_bytes) as reader:
        writers = [PcapWriter(out)]
        if dropped:
            writers.append(PcapWriter(dropped))
        if eve:
            pipe.eve = EveWriter(eve, EVE_TYPES if eve_types is None else eve_types, pipe)
        batches = iter(reader)
        try:
            while True:
                b = pipe.timed("read", lambda: next(batches, None))
                if b is None:
                    break
                pipe.process(b, reader.extra_base)
                pipe.timed("write", lambda: [w.write(b, want) for w, want in
                                             zip(writers, (Verdict.PASS, Verdict.DROP))])
                if pipe.created is not None:  # after the batch, stamped like what caused them
                    pipe.timed("write", lambda: writers[0].write(pipe.created, Verdict.PASS))
                n = b.n
                caplen = b.caplen[:n]
                stats.packets_in += n
                stats.bytes_in += int(caplen.sum(dtype=np.int64))
                stats.bytes_dropped += int(caplen[b.verdict[:n] == Verdict.DROP].sum(dtype=np.int64))
                stats.batches += 1
                if progress:
                    progress(reader.offset)
            pipe.finish()   # the last flow events: the log is complete before anything commits
            if pipe.eve:
                pipe.eve.commit()
        except BaseException:
            for w in writers:
                w.abort()
            if pipe.eve:
                pipe.eve.abort()
            raise
        for w in writers:
            w.commit()
        stats.capture = {"format": reader.format, "linktypes": reader.linktypes,
                         "size": reader.size, "records_skipped": dict(reader.records_skipped)}
    stats.reason_counts = pipe.counts
    stats.stage_ns = pipe.stage_ns
    stats.fragments = pipe.frags.counters()
    stats.flows = pipe.flow_summary.to_dict(pipe.flows.counters())
    stats.names = pipe.l7.counters()
    if pipe.policy:
        stats.policy = {**pipe.policy.counters(), "created": pipe.actions.counters()}
        stats.rule_hits, stats.catalog = pipe.policy.rule_hits, pipe.policy.policy.catalog
    stats.packets_forwarded = writers[0].packets
    stats.bytes_forwarded = writers[0].bytes
    if dropped:
        stats.dropped_unwritable = writers[1].unwritable
    stats.elapsed_s = time.perf_counter() - start
    return stats
