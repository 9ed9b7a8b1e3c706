"""Flow tracking speed on pre-parsed batches, a SYN flood, and the table's memory.

    python -m egressd.bench.flows [--flows 100000 1000000] [--packets 8000000]
                                  [--capacity 1048576] [--flood 10000000]

Batches are PacketBatch columns filled with numpy (no capture, no parse): what is
measured is `FlowTable.track` alone, on one core.  Each flow is opened by a handshake
first; the measured packets are then ACKs of flows picked uniformly at random, in
random directions: the worst case for the caches (real traffic comes in per-flow
bursts).  The SYN flood sends SYNs of distinct new flows into a table holding
established flows, and checks that those survive.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from egressd.engine.batch import PacketBatch
from egressd.engine.flows import FlowConfig, FlowTable

V4_MAPPED = np.uint64(0xFFFF_0000_0000)
ENDPOINTS = 4          # GWLB endpoint ids the flows are spread over
BATCH = 32768          # the capture reader's default batch size
T0 = 1_700_000_000 * 10**9
S = 10**9
TCP_SYN, TCP_ACK, TCP_SYNACK = 0x02, 0x10, 0x12


class FlowSet:
    """`n` distinct TCP flows: client 10.x.y.z:port -> server 198.51.100.w:443."""

    def __init__(self, n: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        ids = rng.permutation(np.arange(n, dtype=np.uint64))  # distinct clients by construction
        self.n = n
        self.eni = np.uint64(0x0A1B2C3D4E5F6000) + ids % np.uint64(ENDPOINTS)
        self.client = V4_MAPPED | (np.uint64(10 << 24) + (ids >> np.uint64(14)))
        self.cport = (np.uint64(1024) + (ids & np.uint64(0x3FFF))).astype(np.uint16)
        self.server = V4_MAPPED | np.uint64((198 << 24) | (51 << 16) | (100 << 8)) \
            | rng.integers(1, 255, n).astype(np.uint64)

    def fill(self, b: PacketBatch, flows: np.ndarray, reply: np.ndarray, flags: int,
             ts: np.ndarray) -> None:
        """Make the batch the packets of `flows` (client->server, or server->client
        where `reply`) with TCP `flags` and timestamps `ts`."""
        n = flows.size
        b.reset(n)
        b.pflags[:n] = 0
        b.ipver[:n] = 4
        b.proto[:n] = 6
        b.gwlb_eni[:n] = self.eni[flows]
        b.gwlb_attach[:n] = 1
        b.gwlb_cookie[:n] = flows
        c, s, cp = self.client[flows], self.server[flows], self.cport[flows]
        b.src_hi[:n] = 0
        b.dst_hi[:n] = 0
        b.src_lo[:n] = np.where(reply, s, c)
        b.dst_lo[:n] = np.where(reply, c, s)
        b.sport[:n] = np.where(reply, 443, cp)
        b.dport[:n] = np.where(reply, cp, 443)
        b.tcp_flags[:n] = flags
        b.ip_len[:n] = 576
        b.ts_ns[:n] = ts


def open_flows(table: FlowTable, fs: FlowSet, b: PacketBatch, t: int = T0) -> None:
    """SYN, SYN-ACK, ACK of every flow of the set, a batch of flows at a time."""
    for lo in range(0, fs.n, b.capacity):
        flows = np.arange(lo, min(lo + b.capacity, fs.n))
        ts = np.full(flows.size, t, np.int64)
        for flags, reply in ((TCP_SYN, False), (TCP_SYNACK, True), (TCP_ACK, False)):
            fs.fill(b, flows, np.full(flows.size, reply), flags, ts)
            table.track(b)
    table.drain_records()


def random_traffic(fs: FlowSet, packets: int, seed: int = 2, t: int = T0 + S) -> list[PacketBatch]:
    """Batches of ACKs of random flows in random directions, 1 us apart."""
    rng = np.random.default_rng(seed)
    out = []
    for lo in range(0, packets, BATCH):
        n = min(BATCH, packets - lo)
        b = PacketBatch(n)
        fs.fill(b, rng.integers(0, fs.n, n), rng.random(n) < 0.5, TCP_ACK,
                t + (lo + np.arange(n, dtype=np.int64)) * 1000)
        out.append(b)
    return out


def track_all(table: FlowTable, batches: list[PacketBatch]) -> None:
    for b in batches:
        table.track(b)
        table.drain_records()


def track_rate(table: FlowTable, batches: list[PacketBatch]) -> float:
    """Packets per second of `table.track` over the batches."""
    start = time.perf_counter()
    track_all(table, batches)
    return sum(b.n for b in batches) / (time.perf_counter() - start)


def syn_flood(table: FlowTable, syns: int, rows: int = 1 << 20, t: int = T0 + 100 * S) -> float:
    """`syns` SYNs of distinct flows from 10.128.0.0/9 (never a FlowSet client) to one
    server, `rows` a batch, 1 us apart; returns packets/s of `track`."""
    b = PacketBatch(min(rows, syns))
    elapsed = 0.0
    for lo in range(0, syns, b.capacity):
        n = min(b.capacity, syns - lo)
        ids = np.arange(lo, lo + n, dtype=np.uint64)
        b.reset(n)
        b.pflags[:n] = 0
        b.ipver[:n] = 4
        b.proto[:n] = 6
        b.gwlb_eni[:n] = np.uint64(0x0A1B2C3D4E5F6000) + ids % np.uint64(ENDPOINTS)
        b.gwlb_attach[:n] = 1
        b.src_hi[:n] = 0
        b.dst_hi[:n] = 0
        b.src_lo[:n] = V4_MAPPED | (np.uint64((10 << 24) | (1 << 23)) + (ids >> np.uint64(16)))
        b.sport[:n] = ids & np.uint64(0xFFFF)
        b.dst_lo[:n] = V4_MAPPED | np.uint64((203 << 24) | (113 << 8) | 5)
        b.dport[:n] = 443
        b.tcp_flags[:n] = TCP_SYN
        b.ip_len[:n] = 60
        b.ts_ns[:n] = t + (lo + np.arange(n, dtype=np.int64)) * 1000
        start = time.perf_counter()
        table.track(b)
        elapsed += time.perf_counter() - start
        table.drain_records()
    return syns / elapsed


def lost_flows(table: FlowTable, fs: FlowSet, t: int) -> int:
    """How many flows of the set a packet at `t` no longer finds (it opens a new flow)."""
    before = table.counters()["created"]
    b = PacketBatch(BATCH)
    for lo in range(0, fs.n, BATCH):
        flows = np.arange(lo, min(lo + BATCH, fs.n))
        fs.fill(b, flows, np.zeros(flows.size, bool), TCP_ACK, np.full(flows.size, t, np.int64))
        table.track(b)
    return table.counters()["created"] - before


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels."""
    table = FlowTable(FlowConfig(capacity=1 << 10))
    fs = FlowSet(100)
    open_flows(table, fs, PacketBatch(BATCH))
    track_all(table, random_traffic(fs, 1000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--packets", type=int, default=8_000_000)
    ap.add_argument("--capacity", type=int, default=FlowConfig().capacity)
    ap.add_argument("--flood", type=int, default=10_000_000)
    args = ap.parse_args()
    cfg = FlowConfig(capacity=args.capacity)
    warm_up()
    table = FlowTable(cfg)
    print(f"table: {cfg.capacity} slots x {table.bytes_per_slot} B = "
          f"{table.nbytes / 1e6:.1f} MB ({table.nbytes / 2**20:.1f} MiB)")
    del table
    for n in args.flows:
        table = FlowTable(cfg)
        fs = FlowSet(n)
        open_flows(table, fs, PacketBatch(BATCH))
        evicted = table.counters()["created"] - n
        batches = random_traffic(fs, args.packets)
        rate = max(track_rate(table, batches) for _ in range(3))
        churn = table.counters()["created"] - n - evicted
        print(f"{n:>9} active flows: {rate / 1e6:6.2f} M packets/s "
              f"({evicted} flows evicted while opening, {churn} re-created over "
              f"{3 * args.packets} packets)")
        del table, batches

    table = FlowTable(cfg)
    est = FlowSet(10_000)
    open_flows(table, est, PacketBatch(BATCH), T0 + 99 * S)
    nbytes = table.nbytes
    rate = syn_flood(table, args.flood)
    c = table.counters()
    print(f"SYN flood: {args.flood} distinct SYNs into {cfg.capacity} slots holding "
          f"{est.n} established flows: {rate / 1e6:.2f} M packets/s; evicted "
          f"{c['evicted_embryonic']} embryonic, {c['evicted_idle']} idle; established "
          f"flows lost: {lost_flows(table, est, T0 + 200 * S)}; table "
          f"{nbytes / 1e6:.1f} MB before, {table.nbytes / 1e6:.1f} MB after")


if __name__ == "__main__":
    main()
