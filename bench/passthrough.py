"""Pass-through replay benchmark: egressd against dpkt, side by side in one run.

    python -m egressd.bench.passthrough [--packets N] [--dpkt-packets N] [--rounds R]
                                        [--batch-packets B] [--dir DIR] [--json OUT]

Generates an IMIX-like GWLB capture (bench/traffic.py) in a temporary folder, warms
numba up on a small capture (compile or cache load, reported apart), then runs in
turn, once untimed and then `rounds` times each, keeping each contestant's best time:

* egressd `replay`, file to file (the figure the targets are about);
* egressd `replay` to /dev/null (the same work without the output file);
* a plain chunked copy of the capture (the machine's file-to-file floor);
* the dpkt pass-through (bench/baselines.py) on the first `dpkt-packets` packets.

Where the time goes comes from replay's own per-stage timing (the stats JSON's
`stages`) in egressd's fastest file-to-file round.  The machine is
shared and noisy: the ratio egressd/dpkt from one run is the result; absolute rates
are only meaningful with the machine description printed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from rich.console import Console
from rich.table import Table

from egressd.bench.baselines import copy_floor, dpkt_passthrough
from egressd.bench.traffic import make_capture
from egressd.engine.pcapio import DEFAULT_BATCH_PACKETS, CaptureReader
from egressd.engine.pipeline import replay

TARGET_PPS = 3_000_000   # file to file, from the issue
TARGET_RATIO = 30        # against dpkt
SAMPLE_COMPARED = 1000   # leading packets whose output bytes must match dpkt's


def machine() -> dict:
    """What the numbers were measured on."""
    info: dict[str, str] = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    caches = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
        if kind != "Instruction":
            caches[f"L{level}"] = (index / "size").read_text().strip()
    return {"cpu": info.get("model name", "unknown"), "mhz": info.get("cpu MHz"),
            "caches": dict(sorted(caches.items())), "cores": os.cpu_count(), "kernel": platform.release(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            **{name: version(name) for name in ("numpy", "numba", "dpkt")}}


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _frames(path: Path, limit: int) -> list[bytes]:
    with CaptureReader(path, batch_packets=limit) as reader:
        b = next(iter(reader))
        return [b.frame(i) for i in range(b.n)]


def run(packets: int, dpkt_packets: int, rounds: int, batch_packets: int, workdir: Path,
        console: Console) -> dict:
    """Measure everything; return the result document (what --json writes)."""
    dpkt_packets = min(dpkt_packets, packets)
    capture = workdir / "gwlb.pcap"
    gen_s, _ = _timed(lambda: make_capture(capture, packets))
    os.sync()  # so that writing the capture back to disk does not slow the first runs
    console.print(f"capture: {packets:,} packets, {capture.stat().st_size / 1e6:.0f} MB, "
                  f"generated in {gen_s:.1f} s")
    warm = workdir / "warm.pcap"
    make_capture(warm, 1000, seed=1)
    warm_s, _ = _timed(lambda: replay(warm, workdir / "warm-out.pcap", batch_packets=batch_packets))

    out = {name: workdir / f"{name}.pcap" for name in ("egressd", "copy", "dpkt")}
    stage_runs: list[dict[str, int]] = []
    contestants: list[tuple[str, Path | None, Callable[[], tuple[int, int]]]] = [
        ("egressd, file to file", out["egressd"],
         lambda: _replay(capture, out["egressd"], batch_packets, packets, stage_runs)),
        ("egressd, file to /dev/null", None,
         lambda: _replay(capture, Path(os.devnull), batch_packets, packets, [])),
        ("plain copy (I/O floor)", out["copy"], lambda: _copy(capture, out["copy"], packets)),
        ("dpkt, file to file", out["dpkt"], lambda: _dpkt(capture, out["dpkt"], dpkt_packets)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in contestants}
    sizes: dict[str, tuple[int, int]] = {}
    # Round 0 is a warm-up, not kept: the first large writes of a process are slow
    # (the VM hands the guest its memory back page by page).
    for r in range(rounds + 1):
        for name, path, fn in contestants:
            if path:
                # A new file each run: ext4 flushes a file written over an old one (by
                # rename or truncation) to disk at once, which would time the disk.
                path.unlink(missing_ok=True)
            dt, sizes[name] = _timed(fn)
            if r:
                times[name].append(dt)
            # Untimed: otherwise the kernel writes this output back to disk while the
            # next contestant is timed, and on 2 cores its flusher takes their CPU.
            os.sync()
        if r:
            console.print(f"round {r}/{rounds}: " + ", ".join(f"{t[-1]:.2f} s" for t in times.values()))
    ours, theirs = _frames(out["egressd"], SAMPLE_COMPARED), _frames(out["dpkt"], SAMPLE_COMPARED)
    if ours != theirs:
        raise AssertionError("egressd and dpkt returned different bytes")

    results = []
    for name, ts in times.items():
        n, nbytes = sizes[name]
        best = min(ts)
        results.append({"name": name, "packets": n, "bytes": nbytes, "best_s": round(best, 4),
                        "runs_s": [round(x, 4) for x in ts], "packets_per_s": round(n / best),
                        "gbit_per_s": round(nbytes * 8 / best / 1e9, 3)})
    pps = {r["name"]: r["packets_per_s"] for r in results}
    ratio = pps["egressd, file to file"] / pps["dpkt, file to file"]
    # The same ratio round by round (neighbours in time): its spread is the noise.
    per_round = sorted((packets / e) / (dpkt_packets / d)
                       for e, d in zip(times["egressd, file to file"], times["dpkt, file to file"]))
    # stage times of the fastest kept file-to-file round (round 0 was the warm-up)
    file_runs = times["egressd, file to file"]
    best_stages = stage_runs[1:][file_runs.index(min(file_runs))]
    return {
        "machine": machine(),
        "capture": {"packets": packets, "bytes": capture.stat().st_size, "generate_s": round(gen_s, 3),
                    "dir": str(workdir)},
        "batch_packets": batch_packets,
        "rounds": rounds,
        "numba_warmup_s": round(warm_s, 3),
        "results": results,
        "ratio_egressd_over_dpkt": round(ratio, 1),
        "ratio_per_round": [round(x, 1) for x in per_round],
        "targets": {"packets_per_s": TARGET_PPS, "ratio": TARGET_RATIO,
                    "packets_per_s_met": pps["egressd, file to file"] >= TARGET_PPS,
                    "ratio_met": ratio >= TARGET_RATIO},
        "stages_s": {k: round(v / 1e9, 4) for k, v in best_stages.items()},
    }


def _replay(capture: Path, out: Path, batch_packets: int, expect: int,
            stage_runs: list[dict[str, int]]) -> tuple[int, int]:
    stats = replay(capture, out, batch_packets=batch_packets)
    stage_runs.append(stats.stage_ns)
    if stats.packets_forwarded != expect:
        raise AssertionError(f"egressd returned {stats.packets_forwarded} of {expect} packets")
    return stats.packets_in, stats.bytes_in


def _copy(capture: Path, out: Path, packets: int) -> tuple[int, int]:
    copied = copy_floor(capture, out)
    return packets, copied - 24 - 16 * packets  # frame bytes, as the others count them


def _dpkt(capture: Path, out: Path, packets: int) -> tuple[int, int]:
    done = dpkt_passthrough(capture, out, limit=packets)
    if done.packets_out != packets:
        raise AssertionError(f"dpkt returned {done.packets_out} of {packets} packets")
    return done.packets_in, done.bytes_in


def report(doc: dict, console: Console) -> None:
    m = doc["machine"]
    caches = " ".join(f"{k} {v}" for k, v in m["caches"].items())
    console.print(f"machine: {m['cpu']} {m['mhz']} MHz, {m['cores']} cores, {caches}, "
                  f"Linux {m['kernel']}, load {m['load_avg_1m']}; "
                  f"Python {m['python']}, numpy {m['numpy']}, numba {m['numba']}, dpkt {m['dpkt']}")
    console.print(f"numba warm-up (compile, or load from cache): {doc['numba_warmup_s']:.2f} s, "
                  "not timed below")
    table = Table(title=f"pass-through replay, best of {doc['rounds']} "
                        f"(batch {doc['batch_packets']} packets)")
    for col in ("contestant", "packets", "best s", "packets/s", "Gbit/s", "runs s"):
        table.add_column(col, justify="left" if col == "contestant" else "right")
    for r in doc["results"]:
        table.add_row(r["name"], f"{r['packets']:,}", f"{r['best_s']:.3f}",
                      f"{r['packets_per_s']:,}", f"{r['gbit_per_s']:.2f}",
                      " ".join(f"{x:.2f}" for x in r["runs_s"]))
    console.print(table)
    t = doc["targets"]
    ours = next(r["packets_per_s"] for r in doc["results"] if r["name"] == "egressd, file to file")
    met = {True: "met", False: "missed"}
    console.print(f"egressd / dpkt: [bold]{doc['ratio_egressd_over_dpkt']}x[/] best against best "
                  f"(target {t['ratio']}x: {met[t['ratio_met']]}; round by round "
                  f"{', '.join(f'{x}x' for x in doc['ratio_per_round'])}); "
                  f"file to file {ours / 1e6:.2f} M packets/s "
                  f"(target {t['packets_per_s'] / 1e6:.0f} M: {met[t['packets_per_s_met']]})")
    stages = Table(title="where replay's time goes (its own stage timing, fastest file-to-file round)")
    for col in ("stage", "ms", "ns/packet"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    n = doc["capture"]["packets"]
    for name, s in doc["stages_s"].items():
        stages.add_row(name, f"{s * 1e3:.1f}", f"{s * 1e9 / n:.1f}")
    console.print(stages)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m egressd.bench.passthrough",
                                description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=1_000_000,
                   help="packets in the capture (default 1,000,000)")
    p.add_argument("--dpkt-packets", type=int, default=100_000,
                   help="leading packets the dpkt baseline replays (default 100,000)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each contestant (default 3)")
    p.add_argument("--batch-packets", type=int, default=DEFAULT_BATCH_PACKETS,
                   help=f"replay batch size (default {DEFAULT_BATCH_PACKETS})")
    p.add_argument("--dir", type=Path, default=None,
                   help="where the capture and outputs go (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="write the result document here")
    args = p.parse_args(argv)
    if args.packets < SAMPLE_COMPARED or args.dpkt_packets < SAMPLE_COMPARED or args.rounds < 1:
        p.error(f"--packets and --dpkt-packets must be >= {SAMPLE_COMPARED}, --rounds >= 1")
    console = Console(width=None if sys.stdout.isatty() else 100)  # tables unwrapped in logs
    with tempfile.TemporaryDirectory(prefix="egressd-bench-", dir=args.dir) as tmp:
        doc = run(args.packets, args.dpkt_packets, args.rounds, args.batch_packets, Path(tmp), console)
    report(doc, console)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
