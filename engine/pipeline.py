"""The replay pipeline: capture in, stages over each batch, returned packets out.

Stages run once per batch, never per packet: decap -> parse -> fragment reassembly
(and parse of what it completed) -> decide -> return path -> sinks.  Until the
policy layer lands, the decision is allow-all.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from egressd.engine.batch import PacketBatch
from egressd.engine.frag import FragConfig, FragTable
from egressd.engine.parse import parse, reparse
from egressd.engine.pcapio import CaptureReader, PcapWriter
from egressd.engine.reasons import N_REASONS, NAMES, STAGES, Verdict
from egressd.geneve.decap import decap
from egressd.geneve.encap import return_inplace

ProgressFn = Callable[[int], None]


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

    @property
    def packets_dropped(self) -> int:
        return int(self.reason_counts[1:].sum())

    def to_dict(self) -> dict:
        drops = {NAMES[r]: int(c) for r, c in enumerate(self.reason_counts) if r and c}
        by_stage: dict[str, int] = {}
        for r, c in enumerate(self.reason_counts):
            if r and c:
                by_stage[STAGES[r]] = by_stage.get(STAGES[r], 0) + int(c)
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
            "fragments": self.fragments,
            "outputs": {"forwarded": self.forwarded_path, "dropped": self.dropped_path,
                        "dropped_not_written": self.dropped_unwritable},
            "batches": self.batches,
            "elapsed_s": round(self.elapsed_s, 6),
            "packets_per_s": round(self.packets_in / self.elapsed_s) if self.elapsed_s > 0 else None,
        }


def _allow_all(b: PacketBatch) -> None:
    v = b.verdict[:b.n]
    v[v == Verdict.PENDING] = Verdict.PASS


def replay(inp: str | Path, out: str | Path, dropped: str | Path | None = None,
           require_gwlb: bool = True, batch_packets: int = 32768,
           frag: FragConfig | None = None, progress: ProgressFn | None = None) -> ReplayStats:
    """Replay capture `inp`; write returned packets to `out` (and drops to `dropped`).

    `progress(bytes_read)` is called after every batch.  Raises CaptureError for a
    capture that cannot be read or an output that cannot be written; outputs are
    only put in place when the whole capture was processed.
    """
    stats = ReplayStats(str(inp), str(out), str(dropped) if dropped else None)
    start = time.perf_counter()
    frags = FragTable(frag)
    with CaptureReader(inp, batch_packets=batch_packets,
                       extra_bytes=frags.config.pool_bytes) as reader:
        writers = [PcapWriter(out)]
        if dropped:
            writers.append(PcapWriter(dropped))
        try:
            for b in reader:
                n = b.n
                decap(b, stats.reason_counts, require_gwlb)
                parse(b, stats.reason_counts)
                frags.reassemble(b, reader.extra_base, stats.reason_counts)
                reparse(b, stats.reason_counts)
                _allow_all(b)
                return_inplace(b)
                writers[0].write(b, Verdict.PASS)
                if dropped:
                    writers[1].write(b, Verdict.DROP)
                caplen = b.caplen[:n]
                stats.packets_in += n
                stats.bytes_in += int(caplen.sum(dtype=np.int64))
                stats.bytes_dropped += int(caplen[b.verdict[:n] == Verdict.DROP].sum(dtype=np.int64))
                stats.batches += 1
                if progress:
                    progress(reader.offset)
        except BaseException:
            for w in writers:
                w.abort()
            raise
        for w in writers:
            w.commit()
        stats.capture = {"format": reader.format, "linktypes": reader.linktypes,
                         "size": reader.size, "records_skipped": dict(reader.records_skipped)}
    stats.fragments = frags.counters()
    stats.packets_forwarded = writers[0].packets
    stats.bytes_forwarded = writers[0].bytes
    if dropped:
        stats.dropped_unwritable = writers[1].unwritable
    stats.elapsed_s = time.perf_counter() - start
    return stats
