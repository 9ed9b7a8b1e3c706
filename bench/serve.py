"""Benchmark of `egressd serve` through network namespaces (python -m egressd.bench.serve).

A generated GWLB capture is sent by the GWLB simulator (in this process, its sockets in
namespace `gwlb`; whole Ethernet frames from an AF_PACKET socket) at increasing rates
to `egressd serve` in namespace `appliance` over a veth pair (MTU 9001), with 1 and
then 2 workers.  Per step: packets offered and sent, forwarded by the workers (their
counters) and returned to the simulator, received and forwarded packets/s over the send
time, loss (sent but never received by a worker: the policy's drops are not loss),
the batch latency p50 / p99 (from the workers' histogram, interpolated within buckets),
the mean batch the workers received, and where the CPU went: each worker's user and
system time, the simulator's, and the machine's softirq time, as shares of one core
over the step.  The highest rate sustained is the highest received rate of a step with
loss at most `--max-loss`.  One JSON line of results on stdout.

CPUs.  Worker i is pinned to CPU i, the simulator to the last CPU.  A veth delivers a
packet in the softirq of the CPU that sent it, so the appliance's kernel receive work
(IP, UDP, socket queue) is done on the simulator's CPU, and the simulator's receive of
the returns on the worker's: on a 2-core host the simulator and the appliance share
both cores, so these numbers are a floor for the appliance alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from egressd import telemetry as T
from egressd.bench.gen import generate
from egressd.bench.netns import APPLIANCE_ADDR, GWLB_ADDR, Pair, veth_pair
from egressd.geneve import gwlbsim

HEALTH, METRICS = 18081, 19101
_TICK = os.sysconf("SC_CLK_TCK")
_SCALAR = {"egressd_packets_received_total": "received", "egressd_packets_forwarded_total": "forwarded",
           "egressd_batches_total": "batches", "egressd_pipeline_seconds_total": "pipeline_s",
           "egressd_send_seconds_total": "send_s"}


def _get(pair: Pair, port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    def fetch():
        try:
            with urllib.request.urlopen(f"http://{APPLIANCE_ADDR}:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""
    return pair.call(pair.gwlb, fetch)


def _scrape(pair: Pair) -> dict:
    """Received, forwarded, batches, pipeline and send seconds and latency bucket counts (non-cumulative), summed
    over the workers."""
    from prometheus_client.parser import text_string_to_metric_families

    _code, text = _get(pair, METRICS, "/metrics")
    out = dict.fromkeys(_SCALAR.values(), 0.0)
    cum: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in _SCALAR:
                out[_SCALAR[s.name]] += s.value
            elif s.name == "egressd_batch_latency_seconds_bucket":
                le = float(s.labels["le"])
                cum[le] = cum.get(le, 0.0) + s.value
    out["buckets"] = np.diff(np.array([cum[k] for k in sorted(cum)]), prepend=0.0)
    return out


def _proc_cpu(pid: int | str) -> np.ndarray:
    """(user, system) seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return np.array([int(fields[11]), int(fields[12])], np.float64) / _TICK


def _softirq() -> float:
    """Seconds of softirq time, all CPUs."""
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[7]) / _TICK


def _workers(serve_pid: int) -> list[int]:
    """The worker processes of an `egressd serve` (its spawned children running
    multiprocessing.spawn), in start order."""
    kids = []
    for task in Path(f"/proc/{serve_pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return sorted(k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes())


def _step(pair: Pair, cap: gwlbsim.Capture, link, count: int, rate: int, workers: list[int]) -> dict:
    sim = pair.call(pair.gwlb, lambda: gwlbsim.Simulator(cap, GWLB_ADDR, APPLIANCE_ADDR, link=link))
    before = _scrape(pair)
    cpu0 = [_proc_cpu(w) for w in workers], _proc_cpu("self"), _softirq(), time.monotonic()
    st = sim.run(count, rate, linger_s=0.3)
    cpu1 = [_proc_cpu(w) for w in workers], _proc_cpu("self"), _softirq(), time.monotonic()
    time.sleep(0.2)
    after = _scrape(pair)
    wall = cpu1[3] - cpu0[3]
    fwd = int(after["forwarded"] - before["forwarded"])
    received = after["received"] - before["received"]
    batches = after["batches"] - before["batches"]
    buckets = after["buckets"] - before["buckets"]
    span = max(st.elapsed_s, st.last_return_s)     # a backlog drains after the sends

    def share(seconds: float) -> float:     # of one core
        return round(float(seconds) / wall, 3)
    return {"offered_pps": rate or "max", "sent": st.sent, "sent_pps": round(st.sent / st.elapsed_s),
            "received": int(received), "forwarded": fwd, "returned": st.returned,
            "received_pps": round(received / span) if span else None,
            "forwarded_pps": round(fwd / span) if span else None,
            "loss": round(1 - received / st.sent, 5) if st.sent else None,
            "batch_latency_us_p50": round(T.latency_quantile(buckets, 0.5) * 1e6, 1),
            "batch_latency_us_p99": round(T.latency_quantile(buckets, 0.99) * 1e6, 1),
            "rtt_us_p50": st.to_dict().get("rtt_us_p50"), "rtt_us_p99": st.to_dict().get("rtt_us_p99"),
            "mean_batch": round(received / batches, 1) if batches else None,
            "pipeline_us_per_batch": round(1e6 * (after["pipeline_s"] - before["pipeline_s"]) / batches, 1)
            if batches else None,
            "send_us_per_batch": round(1e6 * (after["send_s"] - before["send_s"]) / batches, 1)
            if batches else None,
            "worker_user": [share(b[0] - a[0]) for a, b in zip(cpu0[0], cpu1[0])],
            "worker_sys": [share(b[1] - a[1]) for a, b in zip(cpu0[0], cpu1[0])],
            "sim_user": share(cpu1[1][0] - cpu0[1][0]), "sim_sys": share(cpu1[1][1] - cpu0[1][1]),
            "softirq": share(cpu1[2] - cpu0[2]), "wall_s": round(wall, 3),
            "loadavg": os.getloadavg()[0]}


def run_workers(workers: int, cap: gwlbsim.Capture, count: int, rates: list[int], max_loss: float,
                policy: list[str], batch: int) -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    with veth_pair() as pair:
        flags = [f"--policy={p}" for p in policy]
        serve = pair.exec(pair.appliance, ["egressd", "serve", "--workers", str(workers), "--health-port",
                                           str(HEALTH), "--metrics-port", str(METRICS), "--batch", str(batch),
                                           *flags], stderr=subprocess.DEVNULL)
        mine = os.sched_getaffinity(0)
        try:
            end = time.monotonic() + 300
            while _get(pair, HEALTH, "/health")[0] != 200:
                if time.monotonic() > end or serve.poll() is not None:
                    raise RuntimeError("egressd serve did not become healthy")
                time.sleep(0.2)
            pids = _workers(serve.pid)
            for i, pid in enumerate(pids):
                os.sched_setaffinity(pid, {cpus[i % len(cpus)]})
            os.sched_setaffinity(0, {cpus[-1]})
            link = pair.call(pair.gwlb, lambda: gwlbsim.resolve_link(APPLIANCE_ADDR))
            steps = [_step(pair, cap, link, count, r, pids) for r in rates]
        finally:
            os.sched_setaffinity(0, mine)
            serve.terminate()
            serve.wait(30)
    ok = [s for s in steps if s["loss"] is not None and s["loss"] <= max_loss]
    best = max(ok, key=lambda s: s["received_pps"], default=None)
    return {"workers": workers, "worker_cpus": [cpus[i % len(cpus)] for i in range(workers)],
            "sim_cpu": cpus[-1], "sim_link": "packet" if link else "ip", "steps": steps,
            "highest_sustained": best}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m egressd.bench.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--flows", type=int, default=2000)
    p.add_argument("--packets-per-flow", type=int, default=50)
    p.add_argument("--sizes", default="64", help="bench.gen packet sizes: imix, 64, 1500, jumbo")
    p.add_argument("--count", type=int, default=400_000, help="packets sent per step")
    p.add_argument("--rates", default="100000,200000,300000,400000,600000,0",
                   help="offered packets/s per step, 0 = as fast as the simulator sends")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--batch", type=int, default=256, help="serve --batch")
    p.add_argument("--max-loss", type=float, default=0.001)
    p.add_argument("--policy", action="append", default=[])
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    rates = [int(r) for r in a.rates.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(tmp) / "bench.pcap"
        generate(capture, flows=a.flows, packets_per_flow=a.packets_per_flow, sizes=a.sizes, seed=1)
        cap = gwlbsim.load(capture, GWLB_ADDR, APPLIANCE_ADDR)
    results = [run_workers(int(w), cap, a.count, rates, a.max_loss, a.policy, a.batch)
               for w in a.workers.split(",")]
    print(json.dumps({"bench": "serve", "cores": os.cpu_count(), "sizes": a.sizes, "flows": a.flows,
                      "policy": a.policy, "batch": a.batch, "results": results,
                      "note": "simulator, kernel and workers share the cores; CPU shares are of one core"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
