"""A GWLB simulator: replay the GENEVE traffic of a capture to a target, collect what
it returns (`egressd gwlb-sim`).

Each frame's outer IPv4 packet is taken as captured -- UDP ports, GENEVE header,
options and inner packet unchanged -- with its addresses rewritten to (simulator,
target) and its checksums fixed (the UDP one incrementally, RFC 1624, or left 0), and
sent from a raw socket in sendmmsg batches, paced to `rate` packets/s, as GWLB would
send it.  Returns arrive on the simulator's UDP 6081 socket (recvmmsg, engine.sockio
framing) and are written to a pcap.  Round-trip time is measured per returned packet
by finding the sent packet with the same UDP payload (a hash table built at load).
Frames that carry no IPv4 packet are skipped and counted.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

from egressd.engine.pcapio import CaptureError, CaptureReader, PcapWriter
from egressd.engine.reasons import Verdict
from egressd.engine.sockio import (LL_NAME, OUTER, MessageVector, Receiver, packet_socket,
                                   raw_socket, send_batch, sockaddr_ll, udp_socket)
from egressd.engine.wire import copy, ones_sum, u8, u16
from egressd.geneve.decap import ETH_IPV4, _link
from egressd.geneve.header import GENEVE_PORT

ETH = 14                  # Ethernet header room kept in front of every packet loaded
HASH_BYTES = 512          # of the UDP payload hashed to match a return with what was sent
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


@njit(cache=True, nogil=True)
def _fnv(buf, p, length):
    h = _FNV_OFFSET
    for k in range(min(length, HASH_BYTES)):
        h = (h ^ np.uint64(buf[p + k])) * _FNV_PRIME
    return h


@njit(cache=True, nogil=True)
def _outer_packets(buf, off, caplen, link, n, src, dst, out, p, offs, lens, hashes, k):
    """Copy each frame's outer IPv4 packet to out[p:], addresses rewritten, each after
    ETH free bytes (room for an Ethernet header); returns (new p, new k, frames skipped)."""
    skipped = 0
    for i in range(n):
        s = off[i]
        c = np.int64(caplen[i])
        l3, et, r = _link(buf, s, c, link[i])
        if r != 0 or et != ETH_IPV4 or c - l3 < 20:
            skipped += 1
            continue
        q = s + l3
        ihl = np.int64(u8(buf, q) & 0x0F) * 4
        tot = np.int64(u16(buf, q + 2))
        if u8(buf, q) >> 4 != 4 or ihl < 20 or tot < ihl or tot > c - l3:
            skipped += 1
            continue
        p += ETH
        copy(out, p, buf, q, tot)
        old = np.int64(0)
        for j in range(0, 8, 2):
            old += np.int64(u16(out, p + 12 + j))
        for j in range(4):
            out[p + 12 + j] = (src >> (24 - 8 * j)) & 0xFF
            out[p + 16 + j] = (dst >> (24 - 8 * j)) & 0xFF
        out[p + 10] = 0
        out[p + 11] = 0
        cs = ~ones_sum(out, p, ihl) & 0xFFFF
        out[p + 10] = cs >> 8
        out[p + 11] = cs & 0xFF
        u = p + ihl
        if u8(out, p + 9) == 17 and tot - ihl >= 8:
            uc = np.int64(u16(out, u + 6))
            if uc:   # HC' = ~(~HC + ~m + m'), m the old address words, m' the new
                new = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
                total = (~uc & 0xFFFF) + 4 * 0xFFFF - old + new
                sm = total % 0xFFFF   # the end-around carries at once; 0 stands for 0xFFFF
                v = ~sm & 0xFFFF if sm else 0xFFFF   # a computed 0 is sent as 0xFFFF (RFC 768)
                out[u + 6] = v >> 8
                out[u + 7] = v & 0xFF
            hashes[k] = _fnv(out, u + 8, tot - ihl - 8)
        offs[k] = p
        lens[k] = tot
        p += tot
        k += 1
    return p, k, skipped


@njit(cache=True, nogil=True)
def _index(hashes, table):
    """Open-addressing table hash -> first packet index + 1."""
    mask = table.shape[0] - 1
    for i in range(hashes.shape[0]):
        j = np.int64(hashes[i] & np.uint64(mask))
        for _ in range(table.shape[0]):
            t = table[j]
            if t == 0:
                table[j] = i + 1
                break
            if hashes[t - 1] == hashes[i]:
                break
            j = (j + 1) & mask


@njit(cache=True, nogil=True)
def _match(buf, off, caplen, n, hashes, table, sent_ns, now, rtt, m):
    """Append the round-trip time of each returned packet found among those sent."""
    mask = table.shape[0] - 1
    for i in range(n):
        c = np.int64(caplen[i])
        if c < OUTER:
            continue
        h = _fnv(buf, off[i] + OUTER, c - OUTER)
        j = np.int64(h & np.uint64(mask))
        for _ in range(table.shape[0]):
            t = table[j]
            if t == 0:
                break
            if hashes[t - 1] == h:
                if sent_ns[t - 1] and m < rtt.shape[0]:
                    rtt[m] = now - sent_ns[t - 1]
                    m += 1
                break
            j = (j + 1) & mask
    return m


@njit(cache=True, nogil=True)
def _stamp(sent_ns, start, n, now):
    for i in range(start, start + n):
        sent_ns[i] = now


@dataclass
class Capture:
    """A capture's outer IPv4 packets, rewritten, in `data` (packet i at offs[i], the
    ETH bytes in front of it free for an Ethernet header)."""

    data: np.ndarray
    offs: np.ndarray
    lens: np.ndarray
    hashes: np.ndarray
    skipped: int

    @property
    def n(self) -> int:
        return len(self.offs)


def load(path: str | Path, source: str, target: str) -> Capture:
    """Read `path`, keeping each frame's outer IPv4 packet, addressed source -> target."""
    src = int.from_bytes(socket.inet_aton(source), "big")
    dst = int.from_bytes(socket.inet_aton(target), "big")
    parts = []
    skipped = 0
    with CaptureReader(path) as reader:
        for b in reader:
            n = b.n
            out = np.empty(int(b.caplen[:n].sum(dtype=np.int64)) + ETH * n, np.uint8)
            offs, lens = np.empty(n, np.int64), np.empty(n, np.int64)
            hashes = np.zeros(n, np.uint64)
            p, k, s = _outer_packets(b.buf, b.off, b.caplen, b.link, n, src, dst, out, 0, offs, lens,
                                     hashes, 0)
            skipped += int(s)
            parts.append((out[:p], offs[:k], lens[:k], hashes[:k]))
    base = np.cumsum([0] + [len(d) for d, *_ in parts])
    return Capture(np.concatenate([d for d, *_ in parts] or [np.zeros(0, np.uint8)]),
                   np.concatenate([o + base[j] for j, (_, o, _, _) in enumerate(parts)] or [np.zeros(0, np.int64)]),
                   np.concatenate([ln for _, _, ln, _ in parts] or [np.zeros(0, np.int64)]),
                   np.concatenate([h for *_, h in parts] or [np.zeros(0, np.uint64)]), skipped)


@dataclass
class SimStats:
    sent: int = 0
    send_failed: int = 0
    returned: int = 0
    returned_bytes: int = 0
    skipped_frames: int = 0
    link: str = "ip"                # how the packets left: "packet" (AF_PACKET) or "ip" (raw IPv4)
    elapsed_s: float = 0.0
    last_return_s: float = 0.0      # from the first send to the last return
    rtt_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def to_dict(self) -> dict:
        rtt = {}
        if len(self.rtt_ns):
            p50, p99 = np.percentile(self.rtt_ns, [50, 99])
            rtt = {"rtt_us_p50": round(p50 / 1e3, 1), "rtt_us_p99": round(p99 / 1e3, 1),
                   "rtt_matched": len(self.rtt_ns)}
        return {"sent": self.sent, "send_failed": self.send_failed, "returned": self.returned,
                "returned_bytes": self.returned_bytes, "skipped_frames": self.skipped_frames,
                "link": self.link,
                "elapsed_s": round(self.elapsed_s, 6), "last_return_s": round(self.last_return_s, 6),
                "sent_per_s": round(self.sent / self.elapsed_s) if self.elapsed_s else None, **rtt}


@dataclass(frozen=True)
class Link:
    """How the target is reached on its directly attached link: our interface, its MAC,
    the target's MAC."""

    ifname: str
    ifindex: int
    mac: bytes
    target_mac: bytes


def resolve_link(target: str, timeout_s: float = 1.0) -> Link | None:
    """The link to `target` when it is directly attached (no gateway on the route) and
    its neighbour entry has a MAC; None otherwise.  When the kernel has no entry yet,
    one datagram to the target's discard port (9) makes it resolve one."""
    from pyroute2 import IPRoute

    end = time.monotonic() + timeout_s
    with IPRoute() as ip:
        routes = ip.route("get", dst=target)
        if not routes or routes[0].get_attr("RTA_GATEWAY") or routes[0]["type"] != 1:  # 1: unicast
            return None
        ifindex = routes[0].get_attr("RTA_OIF")
        links = ip.get_links(ifindex)
        if not links or links[0]["ifi_type"] != 1:     # ARPHRD_ETHER
            return None
        probed = False
        while True:
            for n in ip.get_neighbours(dst=target, ifindex=ifindex):
                lladdr = n.get_attr("NDA_LLADDR")
                if lladdr and n["state"] & 0x1E:        # REACHABLE, STALE, DELAY, PROBE
                    return Link(links[0].get_attr("IFLA_IFNAME"), ifindex,
                                bytes.fromhex(links[0].get_attr("IFLA_ADDRESS").replace(":", "")),
                                bytes.fromhex(lladdr.replace(":", "")))
            if time.monotonic() > end:
                return None
            if not probed:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.sendto(b"", (target, 9))
                probed = True
            time.sleep(0.01)


class Simulator:
    """Sends a loaded capture to `target` and collects the returns on `source`:6081.

    With a `link` the packets leave as whole Ethernet frames from an AF_PACKET socket
    (no routing, netfilter or qdisc on the way: the sender costs the least kernel time
    per packet, so it is not what limits a benchmark); without, from a raw IPv4 socket,
    routed like any packet."""

    def __init__(self, cap: Capture, source: str, target: str, batch: int = 512,
                 link: Link | None = None) -> None:
        self.cap = cap
        self.target = target
        self.batch = batch
        self.link = link
        n = max(cap.n, 1)
        starts = cap.offs.astype(np.uint64)
        if link is None:
            self.vec = MessageVector(n)
            self.vec.iov[:cap.n, 0] = cap.data.ctypes.data + starts
            self.vec.iov[:cap.n, 1] = cap.lens
            self.vec.names[:] = np.frombuffer(
                np.array([socket.AF_INET], "<u2").tobytes() + bytes(2) + socket.inet_aton(target) + bytes(8),
                np.uint8)
            self.tx = raw_socket()
        else:
            eth = np.frombuffer(link.target_mac + link.mac + b"\x08\x00", np.uint8)
            rows = cap.offs[:, None] - ETH + np.arange(ETH)
            cap.data[rows] = eth
            self.vec = MessageVector(n, name=LL_NAME)
            self.vec.iov[:cap.n, 0] = cap.data.ctypes.data + starts - np.uint64(ETH)
            self.vec.iov[:cap.n, 1] = cap.lens + ETH
            self.vec.names[:] = sockaddr_ll(link.ifindex, link.target_mac)
            self.tx = packet_socket(link.ifname)
        self.table = np.zeros(1 << max(4, int(2 * n - 1).bit_length()), np.int64)
        _index(cap.hashes, self.table)
        self.sent_ns = np.zeros(n, np.int64)
        self.rx = Receiver(udp_socket(source, GENEVE_PORT, timeout_s=0.05), batch)
        self.stats = SimStats(skipped_frames=cap.skipped, link="ip" if link is None else "packet")
        self._rtt = np.zeros(1 << 20, np.int64)
        self._m = 0
        # compile (or load) the kernels now: returns must not wait for them
        _stamp(self.sent_ns, 0, 0, 0)
        _match(self.rx.batch.buf, self.rx.batch.off, self.rx.batch.caplen, 0, cap.hashes, self.table,
               self.sent_ns, 0, self._rtt, 0)
        self._last_return = 0.0
        self._sending = True
        self._start = time.monotonic()

    def _collect(self, writer: PcapWriter | None) -> None:
        st = self.stats
        while self._sending or time.monotonic() - self._last_return < self._linger:
            b = self.rx.receive()
            if b is None:
                if not self._sending and time.monotonic() > self._deadline:
                    break
                continue
            self._last_return = time.monotonic()
            st.last_return_s = self._last_return - self._start
            n = b.n
            st.returned += n
            st.returned_bytes += int(b.caplen[:n].sum(dtype=np.int64))
            self._m = int(_match(b.buf, b.off, b.caplen, n, self.cap.hashes, self.table, self.sent_ns,
                                 b.ts_ns[0], self._rtt, self._m))
            if writer:
                b.l3[:n] = 0
                b.verdict[:n] = Verdict.PASS
                writer.write(b, Verdict.PASS)

    def run(self, count: int | None = None, rate: float = 0.0, out: str | Path | None = None,
            linger_s: float = 0.3, wait_s: float = 5.0) -> SimStats:
        """Send `count` packets (the capture once by default; cycled), at most `rate`
        per second (0: as fast as possible); collect returns until none came for
        `linger_s` (at most `wait_s` after the last send)."""
        cap, st = self.cap, self.stats
        count = cap.n if count is None else count
        writer = PcapWriter(out) if out else None
        self._linger = linger_s
        self._deadline = float("inf")
        collector = threading.Thread(target=self._collect, args=(writer,), daemon=True)
        collector.start()
        start = self._start = time.monotonic()
        done = 0
        try:
            while done < count and cap.n:
                k = done % cap.n
                m = min(self.batch, cap.n - k, count - done)
                if rate:
                    ahead = start + done / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                _stamp(self.sent_ns, k, m, time.time_ns())
                sent, failed = send_batch(self.tx.fileno(), self.vec, k, m)
                st.sent += sent
                st.send_failed += failed
                done += m
            st.elapsed_s = time.monotonic() - start
        finally:
            self._last_return = time.monotonic()
            self._deadline = time.monotonic() + wait_s
            self._sending = False
            collector.join()
            if writer:
                writer.commit()
            self.tx.close()
            self.rx.sock.close()
        st.rtt_ns = self._rtt[:self._m].copy()
        return st


def local_address(target: str) -> str:
    """The address this host sends to `target` from (a route lookup; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((target, GENEVE_PORT))
        return s.getsockname()[0]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gwlb-sim", help="replay a capture's GENEVE traffic to a GWLB target, collect returns",
                       description="Send the outer IPv4 packets of a capture (GWLB GENEVE traffic) to a "
                                   "target as GWLB would, from this host's address, and collect what the "
                                   "target returns on UDP 6081.  Prints a JSON line of statistics.  "
                                   "Needs CAP_NET_RAW.")
    p.add_argument("capture", metavar="PCAP", help="GWLB traffic (pcap or pcapng)")
    p.add_argument("--target", required=True, metavar="ADDR", help="the appliance's IPv4 address")
    p.add_argument("--source", metavar="ADDR", help="GWLB's address (default: the route's source)")
    p.add_argument("--rate", type=float, default=0.0, metavar="PPS",
                   help="packets per second (default 0: as fast as possible)")
    p.add_argument("--count", type=int, metavar="N", help="packets to send, cycling the capture (default: once)")
    p.add_argument("--out", metavar="RETURNED.pcap", help="write the returned packets here")
    p.add_argument("--wait", type=float, default=5.0, metavar="S",
                   help="wait at most this long for returns after the last send (default 5)")
    p.add_argument("--linger", type=float, default=0.3, metavar="S",
                   help="stop once no return came for this long (default 0.3)")
    p.add_argument("--stats", metavar="STATS.json", help="also write the statistics here")
    p.add_argument("--link", choices=("auto", "packet", "ip"), default="auto",
                   help="packet: whole Ethernet frames from an AF_PACKET socket (the target must be "
                        "on a directly attached link); ip: a raw IPv4 socket, routed; auto (default): "
                        "packet when the target is directly attached, else ip")
    p.add_argument("--batch", type=int, default=512, metavar="N",
                   help="packets per sendmmsg (default 512)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from egressd.cli import EXIT_OK, BadInput

    for flag, v in (("--target", args.target), ("--source", args.source)):
        if v is not None:
            try:
                socket.inet_aton(v)
            except OSError:
                raise BadInput(f"{flag} {v}: not an IPv4 address") from None
    if args.rate < 0 or (args.count is not None and args.count < 0):
        raise BadInput("--rate and --count: not negative")
    if not 1 <= args.batch <= 1 << 16:
        raise BadInput(f"--batch {args.batch}: between 1 and 65536")
    source = args.source or local_address(args.target)
    link = resolve_link(args.target) if args.link != "ip" else None
    if args.link == "packet" and link is None:
        raise BadInput(f"--link packet: {args.target} is not on a directly attached Ethernet link "
                       "with a known MAC")
    try:
        cap = load(args.capture, source, args.target)
    except CaptureError as e:
        raise BadInput(str(e)) from None
    try:
        sim = Simulator(cap, source, args.target, args.batch, link)
    except PermissionError:
        raise BadInput("gwlb-sim needs CAP_NET_RAW (raw socket)") from None
    except OSError as e:
        raise BadInput(f"--source {source}: cannot bind UDP {GENEVE_PORT}: {e.strerror}") from None
    report = sim.run(args.count, args.rate, args.out, args.linger, args.wait).to_dict()
    line = json.dumps(report)
    print(line)
    if args.stats:
        Path(args.stats).write_text(line + "\n")
    sys.stdout.flush()
    return EXIT_OK
