"""One `egressd serve` worker process: its own UDP 6081 socket (SO_REUSEPORT), its own
pipeline and flow table, one raw socket for the returns.

The loop, per batch: recvmmsg into the batch buffer, the pipeline (the kernels replay
runs), sendmmsg of the PASS rows and of the packets egressd created, a few counter
updates in shared memory.  Between batches it looks at two control words: a new
policy generation (then it takes the policy the supervisor sent down its pipe) and
stop.  A blocking receive times out after 0.2 s, so an idle worker still sees them.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from egressd import flowspec, telemetry as T
from egressd.engine.batch import ACT_REJECT
from egressd.engine.flows import MIN_CAPACITY, FlowConfig
from egressd.engine.frag import FragConfig, FragMode
from egressd.engine.pipeline import Pipeline
from egressd.engine.reasons import Verdict
from egressd.engine.sockio import OUTER, Receiver, Sender, raw_socket, udp_socket
from egressd.rules.compile import CompiledPolicy

log = logging.getLogger("egressd.serve")

# Flows whose packets warm every kernel up (TLS, HTTP, DNS, QUIC, ICMP, IPv6) before
# the worker reports ready: the first real packets must not wait for numba.
WARMUP_FLOWS = ("tcp 10.0.0.5:40000 -> 203.0.113.7:443 sni=warmup.example",
                "http 10.0.0.5:40001 -> 203.0.113.8:80 host=warmup.example",
                "udp 10.0.0.5:53000 -> 198.51.100.53:53 dns=warmup.example",
                "quic 10.0.0.5:50000 -> 203.0.113.7:443 sni=warmup.example",
                "icmp 10.0.0.5 -> 203.0.113.7",
                "tcp [fd00::5]:40000 -> [2001:db8::7]:443 sni=warmup.example")
_FLOW_EVERY_NS = 250_000_000   # flow counters are copied at most this often


@dataclass(frozen=True)
class WorkerConfig:
    address: str
    batch: int
    flow_capacity: int
    frag_mode: FragMode
    require_gwlb: bool


def _pipeline(cfg: WorkerConfig, policy: CompiledPolicy | None, capacity: int) -> Pipeline:
    return Pipeline(cfg.require_gwlb, FragConfig(mode=cfg.frag_mode), FlowConfig(capacity=capacity),
                    policy=policy)


def warm_up(cfg: WorkerConfig, policy: CompiledPolicy | None, rx: Receiver, tx: Sender) -> None:
    """Run the warm-up flows through a throwaway pipeline and every serve kernel
    (framing, return vectors), sending nothing."""
    frames = [flowspec.gwlb_frame(p.inner) for spec in WARMUP_FLOWS
              for p in flowspec.build_packets(flowspec.parse_flow(spec))]
    pipe = _pipeline(cfg, policy, MIN_CAPACITY)
    b = rx.inject([f[14 + OUTER:] for f in frames], (str(flowspec.GWLB_IP), 40000), time.time_ns())
    pipe.process(b, rx.extra_base)
    if pipe.actions is not None:
        # the warm-up flows are not what the policy answers: have every row ask for an
        # answer, so that the kernel that makes them is ready too
        b.verdict[:b.n] = Verdict.DROP
        b.action[:b.n] = ACT_REJECT
        pipe.created = pipe.actions.run(b)
        b.verdict[:b.n] = Verdict.PASS
    k = tx.add(b, 0)
    if pipe.created is not None:
        tx.add(pipe.created, k)


def run(index: int, cfg: WorkerConfig, shm_name: str, workers: int, conn: Connection) -> None:
    """The worker's life: bind, take the first policy, warm up, serve until stopped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the supervisor decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=f"egressd worker {index}: %(message)s")
    parent = os.getppid()
    shared = T.Shared(workers, shm_name)
    row, ctl = shared.rows[index], shared.control
    row[T.W_PID] = os.getpid()
    generation, policy = conn.recv()
    pipe = _pipeline(cfg, policy, cfg.flow_capacity)
    rx = Receiver(udp_socket(cfg.address, reuseport=True), cfg.batch, pipe.extra_bytes)
    tx = Sender(raw_socket(), 3 * cfg.batch)
    warm_up(cfg, policy, rx, tx)
    row[T.W_GENERATION] = generation
    row[T.W_STATE] = T.READY
    log.info("serving on %s:%d (pid %d)", cfg.address, rx.port, os.getpid())
    reasons = row[T.W_REASONS:T.W_REASONS + len(pipe.counts)]
    flows = row[T.W_FLOWS:T.W_BUCKETS]
    next_flows = 0
    try:
        while not ctl[T.C_STOP] and os.getppid() == parent:
            if ctl[T.C_GENERATION] != generation:
                generation = _reload(pipe, conn, generation)
                row[T.W_GENERATION] = generation
            b = rx.receive()
            now = time.perf_counter_ns()
            if b is not None:
                pipe.process(b, rx.extra_base)
                processed = time.perf_counter_ns()
                k = tx.add(b, 0)
                created = pipe.created.n if pipe.created is not None else 0
                if created:
                    k = tx.add(pipe.created, k)
                failed = tx.failed
                tx.flush(k)
                forwarded = k - (tx.failed - failed)
                n = b.n
                T.record_batch(row, n, int(b.wirelen[:n].sum(dtype=np.int64)), forwarded,
                               int(tx.vec.iov[:k, 1].sum()), created, time.perf_counter_ns() - now,
                               processed - now)
                row[T.W_SEND_FAILED] = tx.failed
                reasons[:] = pipe.counts
            if now >= next_flows:
                flows[:] = np.array(list(pipe.flows.counters().values()), np.int64)
                next_flows = now + _FLOW_EVERY_NS
    finally:
        flows[:] = np.array(list(pipe.flows.counters().values()), np.int64)
        row[T.W_STATE] = T.EXITED
        log.info("stopped")
        rx.sock.close()
        tx.sock.close()
        del reasons, flows, row, ctl
        shared.close()


def _reload(pipe: Pipeline, conn: Connection, generation: int) -> int:
    """Take the newest policy the supervisor sent (it validated it); flows keep their
    state and are judged again on their next packet."""
    while conn.poll():
        generation, policy = conn.recv()
        if policy is not None:
            pipe.set_policy(policy)
    log.info("policy generation %d", generation)
    return generation
