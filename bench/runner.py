"""`egressd bench`'s run: the cells, egressd and the baselines in each, JIT and memory.

bench/harness.py holds the command line and the grid; bench/measure.py egressd's side,
in child processes; bench/report.py and bench/plot.py the output.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from egressd.bench import ndpi, suricata
from egressd.bench.baselines import FlowJudge, copy_floor, dpkt_pipeline, scapy_pipeline
from egressd.bench.gen import generate
from egressd.bench.harness import cells
from egressd.bench.machine import machine
from egressd.bench.policy import allowlist, best, queries, rule_group, target_sets

HOME_NET = ["10.0.0.0/8", "fd00::/16"]        # bench.gen's clients
NAMES_PER_CAPTURE = 1000          # distinct server names in a capture: half allowed
TARGETS = {"file_to_file_pps": 3e6, "in_memory_pps": 5e6, "x_suricata": 10, "x_dpkt": 50}

E_F2F, E_MEM = "egressd file-to-file", "egressd in-memory"
S_SINGLE, S_AUTOFP = "suricata single", "suricata autofp"
DPKT, SCAPY, NDPI, COPY = "dpkt pipeline", "scapy pipeline", "ndpiReader", "plain copy"


# --- inputs -----------------------------------------------------------------------------

def write_policy(domains: int, work: Path) -> tuple[Path, list[str]]:
    """An allowlist of `domains` targets (half `.wildcard`) as AWS rule group JSON."""
    targets = allowlist(domains, np.random.default_rng(domains))
    path = work / f"allow-{domains}.json"
    path.write_text(json.dumps(rule_group(targets, HOME_NET)))
    return path, targets


def names_for(targets: list[str], seed: int) -> list[str]:
    """Server names for the traffic: half under the allowlist, half not."""
    qs = queries(targets, NAMES_PER_CAPTURE, np.random.default_rng(seed))
    return sorted({q.decode() for q in qs})


def prefix(capture: Path, packets: int, out: Path) -> Path:
    """The first `packets` records of a pcap, as a pcap."""
    with open(capture, "rb") as f:
        data = f.read(24)
        pos, n = 24, 0
        while n < packets:
            f.seek(pos)
            head = f.read(16)
            if len(head) < 16:
                break
            pos += 16 + struct.unpack_from("<I", head, 8)[0]
            n += 1
        f.seek(0)
        data = f.read(pos)
    out.write_bytes(data)
    return out


def _child(spec: dict, env: dict | None = None) -> dict:
    """Run bench.measure in a fresh process; its JSON result."""
    res = subprocess.run([sys.executable, "-m", "egressd.bench.measure", json.dumps(spec)],
                         capture_output=True, text=True, env=env, timeout=7200)
    if res.returncode != 0:
        raise RuntimeError(f"bench.measure {spec['mode']} failed: {res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --- rows -------------------------------------------------------------------------------

def row(contestant: str, cell: tuple, packets: int, nbytes: int, seconds: float,
        runs: list[float] | None = None, **extra: object) -> dict:
    sizes, flows, domains = cell
    return {"contestant": contestant, "sizes": sizes, "flows": flows, "domains": domains,
            "status": "ok", "packets": packets, "bytes": nbytes, "seconds": round(seconds, 6),
            "runs_s": [round(r, 6) for r in (runs or [seconds])],
            "packets_per_s": round(packets / seconds) if seconds > 0 else None,
            "gbit_per_s": round(nbytes * 8 / seconds / 1e9, 3) if seconds > 0 else None,
            "ns_per_packet": round(seconds * 1e9 / packets, 1) if packets else None,
            "ratio": None, **extra}


def missing(contestant: str, cell: tuple, why: str, status: str = "missing") -> dict:
    sizes, flows, domains = cell
    return {"contestant": contestant, "sizes": sizes, "flows": flows, "domains": domains,
            "status": status, "note": why, "packets": 0, "bytes": 0, "seconds": None,
            "runs_s": [], "packets_per_s": None, "gbit_per_s": None, "ns_per_packet": None,
            "ratio": None}


def _frames(path: Path) -> list[bytes]:
    import dpkt
    with open(path, "rb") as f:
        return [bytes(frame) for _, frame in dpkt.pcap.Reader(f)]


# --- one cell ---------------------------------------------------------------------------

def run_cell(cell: tuple, headline: bool, s: dict, work: Path, policies: dict, log) -> tuple[dict, list[dict]]:
    sizes, flows, domains = cell
    policy, targets = policies[domains]
    tag = f"{sizes}-{flows}-{domains}"
    capture = work / f"{tag}.pcap"
    ppf = min(50_000, max(1, round(s["packets"] / flows)))
    start = time.perf_counter()
    counts = generate(capture, flows=flows, packets_per_flow=ppf, sizes=sizes,
                      names=names_for(targets, seed=flows), seed=flows)
    gen_s = time.perf_counter() - start
    os.sync()
    total = counts["total"]
    log(f"cell {tag}: {total['packets']:,} packets, {total['bytes'] / 1e6:.0f} MB "
        f"({flows:,} flows x {ppf}), generated in {gen_s:.1f} s")
    chosen = s["baselines"]
    python_here = [b for b in ("dpkt", "scapy") if b in chosen and (headline or b == "dpkt")]
    limits = {"dpkt": s["dpkt_packets"], "scapy": s["scapy_packets"]}
    prefixes = {b: (prefix(capture, limits[b], work / f"{tag}-{b}-in.pcap"),
                    work / f"{tag}-{b}-egressd.pcap") for b in python_here}
    outdir = work / f"{tag}-out"
    outdir.mkdir(exist_ok=True)
    e = _child({"mode": "cell", "policy": [str(policy)], "capture": str(capture),
                "outdir": str(outdir), "rounds": s["rounds"],
                "prefixes": {k: [str(a), str(b)] for k, (a, b) in prefixes.items()}})
    f2f, mem = e["file_to_file"], e["in_memory"]
    rows = [row(E_F2F, cell, f2f["packets"], f2f["bytes"], f2f["seconds"], f2f["runs_s"],
                peak_rss_mb=f2f["peak_rss_mb"]),
            row(E_MEM, cell, mem["packets"], mem["bytes"], mem["seconds"], mem["runs_s"],
                peak_rss_mb=mem["peak_rss_mb"])]
    log(f"  egressd: file to file {rows[0]['packets_per_s']:,} packets/s, in memory "
        f"{rows[1]['packets_per_s']:,} packets/s")
    info: dict = {"sizes": sizes, "flows": flows, "domains": domains, "headline": headline,
                  "packets_per_flow": ppf, "packets": total["packets"], "bytes": total["bytes"],
                  "capture_bytes": capture.stat().st_size, "generate_s": round(gen_s, 3),
                  "generated": {k: v for k, v in counts.items() if k in ("tls", "http", "dns", "quic",
                                                                         "udp", "icmp")},
                  "egressd": {"policy_compile_s": e["policy_compile_s"],
                              "forwarded": f2f["forwarded"], "dropped": f2f["dropped"],
                              "flows_seen": f2f["flows_seen"], "flows_dropped": f2f["flows_dropped"],
                              "in_memory_forwarded": mem["forwarded"],
                              "stages_ns_per_packet": {"in_memory": mem["stages_ns_per_packet"],
                                                       "file_to_file": f2f["stages_ns_per_packet"]}},
                  "checks": {}}
    if headline:
        out = work / f"{tag}-copy.pcap"
        fastest, runs, _ = best(lambda: (out.unlink(missing_ok=True), copy_floor(capture, out))[1],
                                     s["rounds"])
        out.unlink()
        rows.append(row(COPY, cell, total["packets"], total["bytes"], fastest, runs))
    if "suricata" in chosen:
        rows += _suricata(cell, headline, capture, policy, work, info, log)
    for b in python_here:
        rows.append(_python(b, cell, prefixes[b], e["prefixes"][b], targets, info, log))
    if "ndpi" in chosen and headline:
        rows.append(_ndpi(cell, capture, work, info, log))
    capture.unlink()
    for p, q in prefixes.values():
        p.unlink(missing_ok=True)
        q.unlink(missing_ok=True)
    shutil.rmtree(outdir, ignore_errors=True)
    ours = rows[0]["packets_per_s"]
    for r in rows[2:]:
        if r["packets_per_s"]:
            r["ratio"] = round(ours / r["packets_per_s"], 2)
    return info, rows


def _suricata(cell: tuple, headline: bool, capture: Path, policy: Path, work: Path, info: dict,
              log) -> list[dict]:
    modes = [("single", S_SINGLE)] + ([("autofp", S_AUTOFP)] if headline else [])
    if not suricata.version():
        return [missing(name, cell, "suricata not installed (apt-get install suricata)")
                for _, name in modes]
    from egressd.rules.compile import compile_policy
    from egressd.rules.load import load_policies
    group = json.loads(policy.read_text())["RuleGroupResponse"]["RuleGroupName"]
    rules_file = work / f"{policy.stem}.rules"
    if not rules_file.exists():
        rules_file.write_text("\n".join(suricata.rules(compile_policy(load_policies([policy])), group)) + "\n")
    out = []
    for mode, name in modes:
        runs = [suricata.run(capture, rules_file, HOME_NET, mode, work)
                for _ in range(1 if not headline else 2)]
        fast = min(runs, key=lambda r: r["seconds"])
        out.append(row(name, cell, fast["packets"], info["bytes"], fast["seconds"],
                       [r["seconds"] for r in runs], rules_loaded=fast["rules_loaded"],
                       rule_load_s=round(fast["wall_s"] - fast["seconds"], 3),
                       dropped=fast["dropped"], alerts=fast["alerts"]))
        log(f"  {name}: {out[-1]['packets_per_s']:,} packets/s ({fast['rules_loaded']} rules "
            f"loaded in {out[-1]['rule_load_s']:.1f} s, not timed), dropped {fast['dropped']:,}")
        shutil.rmtree(work / f"suricata-{mode}", ignore_errors=True)
    return out


def _python(which: str, cell: tuple, files: tuple[Path, Path], theirs: dict, targets: list[str],
            info: dict, log) -> dict:
    """The dpkt or scapy pipeline on its prefix, checked against egressd's verdicts."""
    inp, egressd_out = files
    out = inp.with_name(inp.name.replace("-in.pcap", "-out.pcap"))
    fn = dpkt_pipeline if which == "dpkt" else scapy_pipeline
    judge = FlowJudge(*target_sets(targets))
    start = time.perf_counter()
    done = fn(inp, out, judge, None if which == "dpkt" else 1 << 62)
    seconds = time.perf_counter() - start
    check = {"packets": done.packets_in, "egressd_forwarded": theirs["forwarded"],
             "forwarded": done.packets_out, "names_read": judge.names,
             "same_count": done.packets_out == theirs["forwarded"]}
    if which == "dpkt":
        check["same_bytes"] = _frames(out) == _frames(egressd_out)
    info["checks"][which] = check
    out.unlink()
    if not check["same_count"] or not check.get("same_bytes", True):
        raise AssertionError(f"the {which} pipeline disagrees with egressd: {check}")
    name = DPKT if which == "dpkt" else SCAPY
    log(f"  {name}: {round(done.packets_in / seconds):,} packets/s on {done.packets_in:,} packets, "
        f"forwarded {done.packets_out:,} as egressd did")
    return row(name, cell, done.packets_in, done.bytes_in, seconds)


def _ndpi(cell: tuple, capture: Path, work: Path, info: dict, log) -> dict:
    if not ndpi.version():
        return missing(NDPI, cell, "ndpiReader not installed (apt-get install libndpi-bin)")
    inner = work / "inner.pcap"
    written = ndpi.write_inner(capture, inner)
    res = ndpi.run(inner)
    inner_bytes = inner.stat().st_size - 24 - 16 * written
    inner.unlink()
    info["checks"]["ndpi"] = {"inner_packets_written": written, "packets_read": res["packets"]}
    log(f"  ndpiReader: {round(res['packets'] / res['seconds']):,} packets/s on the inner packets")
    return row(NDPI, cell, res["packets"], inner_bytes, res["seconds"], process_s=round(res["wall_s"], 3))


# --- JIT and memory ---------------------------------------------------------------------

def jit_times(s: dict, work: Path, policy: Path, log) -> dict:
    """Kernel compile time: cold (an empty numba cache) and cached (a warm one)."""
    tiny = work / "jit.pcap"
    generate(tiny, flows=200, packets_per_flow=10, seed=7)
    spec = {"mode": "jit", "policy": [str(policy)], "capture": str(tiny)}
    out = {"cached_s": round(_child(spec)["jit_s"], 3), "cold_s": None}
    if s["cold_jit"]:
        with tempfile.TemporaryDirectory(prefix="numba-cold-", dir=work) as cache:
            out["cold_s"] = round(_child(spec, {**os.environ, "NUMBA_CACHE_DIR": cache})["jit_s"], 3)
    else:
        out["cold_skipped"] = "--quick or --no-cold-jit"
    log(f"JIT: cached {out['cached_s']:.2f} s, cold "
        + (f"{out['cold_s']:.1f} s" if out["cold_s"] is not None else "skipped"))
    tiny.unlink()
    return out


def memory_scaling(s: dict, work: Path, policy: Path, log) -> dict:
    """Peak RSS of a replay against the flow table's capacity (same capture) and against
    the capture's length (same capacity)."""
    sizes, flows, _ = cells(s)[0]
    long = work / "memory.pcap"
    ppf = min(50_000, max(1, round(s["packets"] / flows)))
    n = generate(long, flows=flows, packets_per_flow=ppf, sizes=sizes, seed=3)["total"]["packets"]
    base = {"mode": "memory", "policy": [str(policy)]}
    capacities, shares = ((1 << 16, 1 << 20), (2,)) if s["quick"] else \
        ((1 << 16, 1 << 18, 1 << 20, 1 << 22), (4, 2))
    by_capacity = [_child({**base, "capture": str(long), "capacity": c}) for c in capacities]
    by_length = []
    for share in shares:
        part = prefix(long, n // share, work / f"memory-{share}.pcap")
        by_length.append(_child({**base, "capture": str(part), "capacity": 1 << 20}))
        part.unlink()
    by_length.append(next(m for m in by_capacity if m["capacity"] == 1 << 20))   # the whole capture
    long.unlink()
    log("memory: peak RSS by flow table capacity "
        + ", ".join(f"{m['capacity']:,}: {m['peak_rss_mb']:.0f} MB" for m in by_capacity)
        + "; by capture length " + ", ".join(f"{m['packets']:,}: {m['peak_rss_mb']:.0f} MB"
                                              for m in by_length))
    return {"by_capacity": by_capacity, "by_length": by_length}


# --- the run ----------------------------------------------------------------------------

def targets_met(rows: list[dict]) -> list[dict]:
    head = {r["contestant"]: r for r in rows if r.get("headline")}
    def pps(name: str) -> float | None:
        return head.get(name, {}).get("packets_per_s")

    f2f, mem = pps(E_F2F), pps(E_MEM)
    out = []
    for what, target, measured in (
            ("file to file, packets/s", TARGETS["file_to_file_pps"], f2f),
            ("in memory, packets/s", TARGETS["in_memory_pps"], mem),
            ("file to file / suricata single", TARGETS["x_suricata"],
             f2f / pps(S_SINGLE) if f2f and pps(S_SINGLE) else None),
            ("file to file / dpkt pipeline", TARGETS["x_dpkt"],
             f2f / pps(DPKT) if f2f and pps(DPKT) else None),
            ("file to file / ndpiReader", 1, f2f / pps(NDPI) if f2f and pps(NDPI) else None)):
        out.append({"what": what, "target": target,
                    "measured": None if measured is None else round(measured, 2),
                    "met": None if measured is None else measured >= target})
    return out


def run(s: dict, work: Path, log) -> dict:
    started = dt.datetime.now(dt.timezone.utc)
    m = machine()
    m["suricata"], m["ndpi"] = suricata.version(), ndpi.version()
    grid = cells(s)
    policies = {d: write_policy(d, work) for d in sorted({c[2] for c in grid})}
    log(f"{len(grid)} cells: " + ", ".join(f"{a}/{f:,} flows/{d:,} domains" for a, f, d in grid))
    infos, rows = [], []
    for k, c in enumerate(grid):
        info, cell_rows = run_cell(c, k == 0, s, work, policies, log)
        for r in cell_rows:
            r["headline"] = k == 0
        infos.append(info)
        rows += cell_rows
    head_policy = policies[grid[0][2]][0]
    jit = jit_times(s, work, head_policy, log)
    mem = memory_scaling(s, work, head_policy, log)
    m["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    return {"schema": "egressd-bench/1", "started": started.isoformat(timespec="seconds"),
            "seconds": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1),
            "command": sys.argv, "quick": s.get("quick", False), "machine": m,
            "settings": {k: v for k, v in s.items() if k != "quick"},
            "headline": {"sizes": grid[0][0], "flows": grid[0][1], "domains": grid[0][2]},
            "jit": jit, "memory": mem, "cells": infos, "rows": rows,
            "targets": targets_met(rows)}
