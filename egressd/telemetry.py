"""What `egressd serve` workers report, in shared memory, and how it is served:
Prometheus metrics (a prometheus-client Collector that reads the shared counters at
scrape time) and the health check GWLB target groups send.

Workers add to their row of one shared uint64 array a few numpy operations per
batch; nothing runs per packet or per metric update.  The supervisor only reads.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import shared_memory

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from egressd.engine.flows import COUNTER_NAMES as FLOW_COUNTERS
from egressd.engine.reasons import N_REASONS, NAMES, STAGES

# worker states
STARTING, READY, EXITED = 0, 1, 2
# control words (row 0 of the control array): set by the supervisor
C_GENERATION, C_DRAINING, C_STOP, C_RELOAD_FAILURES = range(4)
N_CONTROL = 4

# batch latency histogram bounds, seconds (Prometheus `le`)
LATENCY_BOUNDS = np.array([10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
                           10e-3, 25e-3, 50e-3, 100e-3, 250e-3])
_BOUNDS_NS = (LATENCY_BOUNDS * 1e9).astype(np.int64)

# a worker's row: scalar words, then drops by reason, flow counters, latency buckets
(W_STATE, W_PID, W_GENERATION, W_PACKETS, W_BYTES, W_FORWARDED, W_FORWARDED_BYTES, W_CREATED,
 W_SEND_FAILED, W_BATCHES, W_LATENCY_SUM_NS, W_PIPELINE_NS, W_SEND_NS) = range(13)
W_REASONS = 13
W_FLOWS = W_REASONS + N_REASONS
W_BUCKETS = W_FLOWS + len(FLOW_COUNTERS)
ROW = W_BUCKETS + len(LATENCY_BOUNDS) + 1


class Shared:
    """The control words and one row per worker, in one shared memory block."""

    def __init__(self, workers: int, name: str | None = None) -> None:
        size = 8 * (N_CONTROL + workers * ROW)
        self._shm = shared_memory.SharedMemory(name=name, create=name is None, size=size)
        self.owner = name is None
        words = np.ndarray(N_CONTROL + workers * ROW, np.uint64, self._shm.buf)
        if self.owner:
            words[:] = 0
        self.control = words[:N_CONTROL]
        self.rows = words[N_CONTROL:].reshape(workers, ROW)
        self.name = self._shm.name

    def close(self) -> None:
        self.control = self.rows = None  # type: ignore[assignment]  # views must go first
        self._shm.close()
        if self.owner:
            self._shm.unlink()

    def healthy(self) -> bool:
        """Every worker's pipeline running (warmed up, policy loaded), not draining."""
        return (not self.control[C_DRAINING]
                and bool((self.rows[:, W_STATE] == READY).all()))


def record_batch(row: np.ndarray, packets: int, nbytes: int, forwarded: int, forwarded_bytes: int,
                 created: int, latency_ns: int, pipeline_ns: int) -> None:
    """Add one batch to a worker's row: `latency_ns` from its receive to its last send,
    `pipeline_ns` of that in the pipeline (the rest is building and sending the returns)."""
    row[W_PACKETS] += packets
    row[W_BYTES] += nbytes
    row[W_FORWARDED] += forwarded
    row[W_FORWARDED_BYTES] += forwarded_bytes
    row[W_CREATED] += created
    row[W_BATCHES] += 1
    row[W_LATENCY_SUM_NS] += latency_ns
    row[W_PIPELINE_NS] += pipeline_ns
    row[W_SEND_NS] += latency_ns - pipeline_ns
    row[W_BUCKETS + int(np.searchsorted(_BOUNDS_NS, latency_ns))] += 1


def latency_quantile(buckets: np.ndarray, q: float) -> float:
    """Quantile q of a latency histogram (non-cumulative bucket counts), interpolated
    within its bucket as Prometheus' histogram_quantile does; seconds."""
    total = buckets.sum()
    if not total:
        return float("nan")
    cum = np.cumsum(buckets)
    k = int(np.searchsorted(cum, q * total))
    if k >= len(LATENCY_BOUNDS):
        return float(LATENCY_BOUNDS[-1])
    lo = LATENCY_BOUNDS[k - 1] if k else 0.0
    before = cum[k - 1] if k else 0
    return float(lo + (LATENCY_BOUNDS[k] - lo) * (q * total - before) / buckets[k])


class ServeCollector(Collector):
    """The workers' shared counters as Prometheus metrics, read at each scrape."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def collect(self) -> Iterator:
        rows = self.shared.rows.copy()
        ctl = self.shared.control
        workers = [str(w) for w in range(len(rows))]

        def per_worker(cls, name, doc, col):
            m = cls(name, doc, labels=["worker"])
            for w, r in zip(workers, rows):
                m.add_metric([w], float(r[col]))
            return m

        yield per_worker(CounterMetricFamily, "egressd_packets_received", "GENEVE datagrams received", W_PACKETS)
        yield per_worker(CounterMetricFamily, "egressd_bytes_received",
                         "bytes received (outer IPv4 packets)", W_BYTES)
        yield per_worker(CounterMetricFamily, "egressd_packets_forwarded",
                         "packets returned to GWLB (passed and created)", W_FORWARDED)
        yield per_worker(CounterMetricFamily, "egressd_bytes_forwarded", "bytes returned to GWLB",
                         W_FORWARDED_BYTES)
        yield per_worker(CounterMetricFamily, "egressd_packets_created",
                         "packets egressd created (TCP resets, ICMP errors, DNS answers)", W_CREATED)
        yield per_worker(CounterMetricFamily, "egressd_send_failures",
                         "returned packets the raw socket refused", W_SEND_FAILED)
        yield per_worker(CounterMetricFamily, "egressd_batches", "batches processed", W_BATCHES)
        seconds = [(W_PIPELINE_NS, "egressd_pipeline_seconds", "time in the pipeline (decap to verdicts)"),
                   (W_SEND_NS, "egressd_send_seconds", "time building and sending the returns")]
        for col, name, doc in seconds:
            m = CounterMetricFamily(name, doc, labels=["worker"])
            for w, r in zip(workers, rows):
                m.add_metric([w], float(r[col]) / 1e9)
            yield m
        ready = GaugeMetricFamily("egressd_worker_ready", "1 when the worker is serving", labels=["worker"])
        for w, r in zip(workers, rows):
            ready.add_metric([w], float(r[W_STATE] == READY))
        yield ready
        yield per_worker(GaugeMetricFamily, "egressd_worker_policy_generation",
                         "policy generation the worker decides with", W_GENERATION)
        drops = CounterMetricFamily("egressd_packets_dropped", "packets dropped, by reason",
                                    labels=["worker", "reason", "stage"])
        for w, r in zip(workers, rows):
            for k in range(1, N_REASONS):
                if r[W_REASONS + k]:
                    drops.add_metric([w, NAMES[k], STAGES[k]], float(r[W_REASONS + k]))
        yield drops
        flows = CounterMetricFamily("egressd_flows", "flow table events (engine.flows counters)",
                                    labels=["worker", "event"])
        for w, r in zip(workers, rows):
            for k, name in enumerate(FLOW_COUNTERS):
                if name != "active":
                    flows.add_metric([w, name], float(r[W_FLOWS + k]))
        yield flows
        yield per_worker(GaugeMetricFamily, "egressd_flows_active", "flows in the flow table",
                         W_FLOWS + FLOW_COUNTERS.index("active"))
        hist = HistogramMetricFamily("egressd_batch_latency_seconds",
                                     "time from a batch's receive to its last send",
                                     labels=["worker"])
        for w, r in zip(workers, rows):
            cum = np.cumsum(r[W_BUCKETS:W_BUCKETS + len(LATENCY_BOUNDS) + 1])
            buckets = [(f"{b:g}", float(c)) for b, c in zip(LATENCY_BOUNDS, cum)]
            buckets.append(("+Inf", float(cum[-1])))
            hist.add_metric([w], buckets, float(r[W_LATENCY_SUM_NS]) / 1e9)
        yield hist
        yield GaugeMetricFamily("egressd_policy_generation",
                                "policy generation loaded (1 at start, +1 per good reload)",
                                value=float(ctl[C_GENERATION]))
        yield CounterMetricFamily("egressd_policy_reload_failures",
                                  "reloads refused (the policy did not load; the old one kept running)",
                                  value=float(ctl[C_RELOAD_FAILURES]))


def serve_health(shared: Shared, addr: str, port: int) -> ThreadingHTTPServer:
    """GET /health: 200 while every worker serves, 503 while starting or draining; any
    TCP connection is accepted (a TCP health check).  Runs in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] != "/health":
                self._reply(404, b"not found\n")
            elif shared.healthy():
                self._reply(200, b"ok\n")
            else:
                self._reply(503, b"draining\n" if shared.control[C_DRAINING] else b"starting\n")

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass  # one line per check every few seconds is noise

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
