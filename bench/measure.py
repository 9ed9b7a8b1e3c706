"""egressd's side of `egressd bench`, run in a child process per measurement so that its
peak memory (VmHWM) and its JIT start-up are its own.

    python -m egressd.bench.measure '{"mode": "cell", ...}'     # prints one JSON line

Modes:
* cell: the whole pipeline file to file (`replay`, what `egressd replay` runs) and in
  memory (the capture read into one buffer and cut into batches beforehand: no I/O,
  no record scan; the returned packets are packed into pcap records and written to
  /dev/null), a warm-up round each and then `rounds` timed ones, best kept; per-stage
  time from the pipeline's own stage timers; peak RSS after the file-to-file rounds and
  after the in-memory ones; egressd's forwarded count on the prefix captures given.
* memory: one replay with a given flow table capacity; peak RSS.
* jit: the first replay of a small capture in this fresh process (kernels compiled, or
  loaded from numba's cache) against the second (steady state).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from egressd.engine.batch import PacketBatch
from egressd.engine.flows import FlowConfig
from egressd.engine.pcapio import DEFAULT_BATCH_PACKETS, CaptureReader, PcapWriter
from egressd.engine.pipeline import Pipeline, replay
from egressd.engine.reasons import Verdict
from egressd.rules.compile import CompiledPolicy, compile_policy
from egressd.rules.load import load_policies

READER_COLUMNS = ("off", "caplen", "wirelen", "ts_ns", "link")


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM).  Not ru_maxrss: Linux folds the parent's peak into
    it across fork and exec, and the parent has just generated gigabytes of capture."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


def _policy(paths: list[str]) -> tuple[CompiledPolicy | None, float]:
    start = time.perf_counter()
    cp = compile_policy(load_policies(paths)) if paths else None
    return cp, time.perf_counter() - start


def _ns_per_packet(stage_ns: dict[str, int], packets: int) -> dict[str, float]:
    return {k: round(v / max(packets, 1), 1) for k, v in stage_ns.items()}


def file_to_file(capture: Path, outdir: Path, cp: CompiledPolicy | None, rounds: int,
                 capacity: int) -> dict:
    runs, best = [], None
    for r in range(rounds + 1):            # round 0: warm-up, not kept
        out = outdir / f"egressd-{r}.pcap"
        # a new file each round: ext4 flushes a file written over an old one at once
        st = replay(capture, out, policy=cp, flows=FlowConfig(capacity=capacity))
        os.sync()   # untimed: the next round must not pay for writing this one back
        out.unlink()
        if r:
            runs.append(st.elapsed_s)
            if best is None or st.elapsed_s < best.elapsed_s:
                best = st
    d = best.to_dict()
    return {"packets": best.packets_in, "bytes": best.bytes_in, "seconds": best.elapsed_s,
            "runs_s": runs, "stages_ns_per_packet": _ns_per_packet(best.stage_ns, best.packets_in),
            "forwarded": best.packets_forwarded, "dropped": best.packets_dropped,
            "flows_seen": d["flows"]["created"],
            "flows_dropped": (d["policy"] or {}).get("flows_dropped", 0)}


class InMemory:
    """A capture held in memory: one buffer (with the fragment slabs' room behind it)
    and the reader's columns of every batch, so that a round is the pipeline alone."""

    def __init__(self, capture: Path, extra_bytes: int, batch_packets: int) -> None:
        raw = np.fromfile(capture, np.uint8)
        self.size = len(raw)
        self.pristine = raw
        self.buf = np.empty(self.size + extra_bytes, np.uint8)
        self.batches: list[tuple[np.ndarray, ...]] = []
        with CaptureReader(capture, batch_packets=batch_packets) as reader:
            for b in reader:
                # the reader's buffer starts at file offset `bytes_consumed`
                cols = [getattr(b, c)[:b.n].copy() for c in READER_COLUMNS]
                cols[0] += reader.bytes_consumed
                self.batches.append(tuple(cols))
        self.packets = sum(len(c[0]) for c in self.batches)
        self.bytes = sum(int(c[1].sum(dtype=np.int64)) for c in self.batches)
        self.batch_packets = batch_packets

    def round(self, cp: CompiledPolicy | None, capacity: int) -> tuple[float, Pipeline, int]:
        """One pass of the pipeline; (seconds, the pipeline, packets forwarded)."""
        self.buf[:self.size] = self.pristine    # the return path rewrote the frames in place
        pipe = Pipeline(flows=FlowConfig(capacity=capacity), policy=cp)
        b = PacketBatch(self.batch_packets, self.buf)
        writer = PcapWriter(os.devnull)
        start = time.perf_counter()
        for cols in self.batches:
            for name, col in zip(READER_COLUMNS, cols):
                getattr(b, name)[:len(col)] = col
            b.reset(len(cols[0]))
            pipe.process(b, self.size)
            pipe.timed("write", lambda: writer.write(b, Verdict.PASS))
            if pipe.created is not None:
                pipe.timed("write", lambda: writer.write(pipe.created, Verdict.PASS))
        pipe.finish()
        seconds = time.perf_counter() - start
        writer.commit()
        return seconds, pipe, writer.packets


def in_memory(capture: Path, cp: CompiledPolicy | None, rounds: int, capacity: int,
              batch_packets: int) -> dict:
    mem = InMemory(capture, Pipeline(policy=cp).extra_bytes, batch_packets)
    runs, best = [], None
    for r in range(rounds + 1):
        seconds, pipe, forwarded = mem.round(cp, capacity)
        if r:
            runs.append(seconds)
            if best is None or seconds < best[0]:
                best = (seconds, pipe, forwarded)
    seconds, pipe, forwarded = best
    return {"packets": mem.packets, "bytes": mem.bytes, "seconds": seconds, "runs_s": runs,
            "stages_ns_per_packet": _ns_per_packet(pipe.stage_ns, mem.packets),
            "forwarded": forwarded}


def cell(spec: dict) -> dict:
    cp, compile_s = _policy(spec["policy"])
    capacity = spec.get("capacity", FlowConfig().capacity)
    batch = spec.get("batch_packets", DEFAULT_BATCH_PACKETS)
    out: dict = {"policy_compile_s": round(compile_s, 3)}
    out["file_to_file"] = file_to_file(Path(spec["capture"]), Path(spec["outdir"]), cp,
                                       spec["rounds"], capacity)
    out["file_to_file"]["peak_rss_mb"] = peak_rss_mb()
    out["in_memory"] = in_memory(Path(spec["capture"]), cp, spec["rounds"], capacity, batch)
    out["in_memory"]["peak_rss_mb"] = peak_rss_mb()
    # egressd's verdicts on the prefixes the Python baselines read
    out["prefixes"] = {}
    for name, (prefix, returned) in spec.get("prefixes", {}).items():
        st = replay(prefix, returned, policy=cp, flows=FlowConfig(capacity=capacity))
        out["prefixes"][name] = {"packets": st.packets_in, "forwarded": st.packets_forwarded}
    return out


def memory(spec: dict) -> dict:
    cp, _ = _policy(spec["policy"])
    st = replay(spec["capture"], os.devnull, policy=cp, flows=FlowConfig(capacity=spec["capacity"]))
    return {"packets": st.packets_in, "capacity": spec["capacity"], "peak_rss_mb": peak_rss_mb()}


def jit(spec: dict) -> dict:
    cp, _ = _policy(spec["policy"])
    times = []
    for _ in range(2):
        st = replay(spec["capture"], os.devnull, policy=cp)
        times.append(st.elapsed_s)
    return {"first_s": times[0], "steady_s": times[1], "jit_s": max(times[0] - times[1], 0.0),
            "packets": st.packets_in}


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = {"cell": cell, "memory": memory, "jit": jit}[spec["mode"]](spec)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
