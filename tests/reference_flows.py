"""engine.flows' slow twin: a dict of flows, one packet at a time.

Written from the rules in engine/flows.py's docstring, not from its kernels: the key
is a frozenset of the two endpoints (no canonical order, no hashing, no buckets), TCP
transitions are looked up in a table of segment events, and the dict is unbounded
(nothing is ever evicted, so differential tests use a table large enough that the
kernel evicts nothing either).
"""
from __future__ import annotations

from dataclasses import dataclass, field

TCP = 6
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
PF_FRAGMENT, PF_ICMP_ERROR, PF_REASSEMBLED = 0x01, 0x04, 0x08
DROP = 2

# flags as engine.flows numbers them (compared with the kernel's)
MIDSTREAM, SEEN_REPLY, FIN_INIT, FIN_RESP, RST_SEEN = 0x01, 0x02, 0x04, 0x08, 0x10

# (state, event, sent by the initiator) -> state, for the SYN and ACK events; RST and
# FIN are handled in ReferenceFlows._tcp.
_STEP = {
    ("syn_sent", "synack", False): "syn_rcvd",
    ("syn_rcvd", "ack", True): "established",
}


@dataclass
class Packet:
    """One batch row as engine.parse leaves it (addresses as 128-bit ints)."""

    src: int
    sport: int
    dst: int
    dport: int
    proto: int = TCP
    ipver: int = 4
    eni: int = 1
    attach: int = 1
    tcp_flags: int = 0
    ip_len: int = 60
    ts: int = 0
    cookie: int = 0
    pflags: int = 0
    verdict: int = 0
    # ICMP errors: the quoted packet (proto, src, sport, dst, dport)
    rel: tuple[int, int, int, int, int] | None = None


@dataclass
class Flow:
    flow_id: int
    eni: int
    attach: int
    ipver: int
    proto: int
    initiator: tuple[int, int]
    responder: tuple[int, int]
    first_ts: int
    cookie: int
    state: str = "none"
    flags: int = 0
    last_ts: int = 0
    pkts: list[int] = field(default_factory=lambda: [0, 0])
    bytes: list[int] = field(default_factory=lambda: [0, 0])

    def record(self, reason: str) -> dict:
        return {"flow_id": self.flow_id, "eni": self.eni, "attach": self.attach,
                "ipver": self.ipver, "proto": self.proto, "state": self.state,
                "flags": self.flags, "reason": reason,
                "src": self.initiator, "dst": self.responder,
                "first_ts": self.first_ts, "last_ts": self.last_ts,
                "pkts_toserver": self.pkts[0], "pkts_toclient": self.pkts[1],
                "bytes_toserver": self.bytes[0], "bytes_toclient": self.bytes[1],
                "cookie": self.cookie}


class ReferenceFlows:
    def __init__(self, tcp_idle_ns: int, other_idle_ns: int) -> None:
        self.tcp_idle_ns = tcp_idle_ns
        self.other_idle_ns = other_idle_ns
        self.flows: dict[tuple, Flow] = {}
        self.records: list[dict] = []
        self.next_id = 1
        self.latest: int | None = None
        self.counts = {"created": 0, "timed_out": 0, "reused": 0, "midstream": 0,
                       "icmp_related": 0, "icmp_unrelated": 0, "flushed": 0}

    def _idle_limit(self, proto: int) -> int:
        return self.tcp_idle_ns if proto == TCP else self.other_idle_ns

    def _alive(self, f: Flow, ts: int) -> bool:
        return ts - f.last_ts <= self._idle_limit(f.proto)

    def _end(self, key: tuple, reason: str) -> None:
        self.records.append(self.flows.pop(key).record(reason))

    def packet(self, p: Packet) -> tuple[int, int]:
        """(flow_id, dir) of a packet, (0, 0) for none; updates the flows."""
        self.latest = p.ts if self.latest is None else max(self.latest, p.ts)
        if p.verdict == DROP or (p.pflags & PF_FRAGMENT and not p.pflags & PF_REASSEMBLED):
            return 0, 0
        if p.pflags & PF_ICMP_ERROR:
            proto, src, sport, dst, dport = p.rel
            f = self.flows.get((p.eni, p.attach, p.ipver, proto,
                                frozenset({(src, sport), (dst, dport)})))
            if f is None or not self._alive(f, p.ts):
                self.counts["icmp_unrelated"] += 1
                return 0, 0
            self.counts["icmp_related"] += 1
            # the error goes back toward the quoted packet's sender
            return f.flow_id, 1 if (src, sport) == f.initiator else 0
        me, peer = (p.src, p.sport), (p.dst, p.dport)
        key = (p.eni, p.attach, p.ipver, p.proto, frozenset({me, peer}))
        f = self.flows.get(key)
        if f is not None and not self._alive(f, p.ts):
            self._end(key, "timeout")
            self.counts["timed_out"] += 1
            f = None
        pure_syn = p.tcp_flags & (SYN | ACK | RST) == SYN
        if f is not None and p.proto == TCP and f.state == "closed" and pure_syn:
            self._end(key, "reused")
            self.counts["reused"] += 1
            f = None
        if f is None:
            f = self._open(key, p, me, peer, pure_syn)
        d = 0 if me == f.initiator else 1
        f.pkts[d] += 1
        f.bytes[d] += p.ip_len
        if d:
            f.flags |= SEEN_REPLY
        if p.proto == TCP:
            self._tcp(f, p.tcp_flags, d == 0)
        f.last_ts = max(f.last_ts, p.ts)
        return f.flow_id, d

    def _open(self, key: tuple, p: Packet, me: tuple, peer: tuple, pure_syn: bool) -> Flow:
        initiator, responder, state, flags = me, peer, "none", 0
        if p.proto == TCP:
            if pure_syn:
                state = "syn_sent"
            elif p.tcp_flags & (SYN | ACK | RST) == SYN | ACK:
                state, flags = "syn_rcvd", MIDSTREAM
                initiator, responder = peer, me
            else:
                state, flags = "established", MIDSTREAM
        f = Flow(self.next_id, p.eni, p.attach, p.ipver, p.proto, initiator, responder,
                 first_ts=p.ts, cookie=p.cookie, state=state, flags=flags, last_ts=p.ts)
        self.next_id += 1
        self.flows[key] = f
        self.counts["created"] += 1
        self.counts["midstream"] += bool(flags & MIDSTREAM)
        return f

    def _tcp(self, f: Flow, tcp_flags: int, by_init: bool) -> None:
        if tcp_flags & RST:
            f.state = "closed"
            f.flags |= RST_SEEN
            return
        if tcp_flags & SYN:
            event = "synack" if tcp_flags & ACK else "syn"
            f.state = _STEP.get((f.state, event, by_init), f.state)
            return
        if tcp_flags & ACK:
            f.state = _STEP.get((f.state, "ack", by_init), f.state)
        if tcp_flags & FIN:
            mine = FIN_INIT if by_init else FIN_RESP
            if f.state == "fin_wait" and not f.flags & mine:
                f.state = "closed"
                f.flags |= mine
            elif f.state == "established":
                f.state = "fin_wait"
                f.flags |= mine

    def flush(self, now: int | None = None) -> None:
        """End every flow: timeout if idle past its limit at `now` (default: the latest
        packet seen), else shutdown."""
        now = self.latest if now is None else now
        for key in list(self.flows):
            if self._alive(self.flows[key], now):
                self.counts["flushed"] += 1
                self._end(key, "shutdown")
            else:
                self.counts["timed_out"] += 1
                self._end(key, "timeout")
