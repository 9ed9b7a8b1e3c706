"""PacketBatch: a vector of packets as a structure of arrays.

One uint8 buffer holds the frames; every other field is a column indexed by packet
number.  Stages are kernels that read and fill columns in place; nothing here is
per-packet Python except the debug helpers.
"""
from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np

from egressd.engine.reasons import NAMES, Reason, Verdict

# what a row asks of engine.actions beyond its verdict (column `action`, set by rules.match)
ACT_NONE, ACT_REJECT, ACT_DNS_NODATA, ACT_DNS_NXDOMAIN, ACT_DNS_OVERRIDE = range(5)

# name -> dtype.  Offsets inside a frame (l3, geneve, inner) are relative to `off`.
COLUMNS: dict[str, type] = {
    # filled by the capture reader (or socket receive)
    "off": np.int64,          # frame start in `buf`
    "caplen": np.uint32,      # bytes present in `buf`
    "wirelen": np.uint32,     # bytes the frame had on the wire
    "ts_ns": np.int64,        # capture timestamp, ns since the epoch
    "link": np.uint16,        # pcap LINKTYPE_* of the frame
    # filled by geneve.decap
    "l3": np.uint16,          # outer IPv4 header
    "geneve": np.uint16,      # GENEVE header
    "inner": np.uint16,       # inner IP packet
    "inner_len": np.uint32,   # inner IP packet length (to the end of the UDP payload)
    "gproto": np.uint16,      # GENEVE protocol type (0x0800 / 0x86DD)
    "vni": np.uint32,
    "outer_src": np.uint32,   # GWLB's address
    "outer_dst": np.uint32,   # ours
    "outer_sport": np.uint16, # GWLB's flow-hashed source port, kept on the return path
    "gwlb_eni": np.uint64,    # GWLB endpoint id (option type 1)
    "gwlb_attach": np.uint64, # attachment id (option type 2)
    "gwlb_cookie": np.uint32, # flow cookie (option type 3)
    # filled by engine.parse: the inner packet as inspected.  `ip`, `l4` and `payload`
    # are absolute offsets into `buf`: a reassembled datagram lives outside its frame.
    "ip": np.int64,           # inner IP header
    "ip_len": np.uint32,      # inner IP packet length (total length, within the capture)
    "ipver": np.uint8,        # 4 or 6
    "proto": np.uint8,        # transport protocol after IPv6 extension headers
    "src_hi": np.uint64,      # addresses as 128-bit numbers, IPv4 mapped (::ffff:a.b.c.d)
    "src_lo": np.uint64,
    "dst_hi": np.uint64,
    "dst_lo": np.uint64,
    "sport": np.uint16,       # ICMP echo: the identifier, in both
    "dport": np.uint16,
    "icmp_type": np.uint8,
    "icmp_code": np.uint8,
    "tcp_flags": np.uint8,
    "tcp_seq": np.uint32,
    "tcp_ack": np.uint32,
    "l4": np.int64,           # transport header (0: none, e.g. a non-first fragment)
    "payload": np.int64,      # transport payload
    "payload_len": np.uint32,
    "pflags": np.uint16,      # engine.parse.PF_* bits
    "frag_id": np.uint32,     # IPv4 identification / IPv6 fragment header identification
    "frag_off": np.uint32,    # fragment offset in bytes
    # ICMP errors: the tuple of the packet they quote, as that packet was sent
    "rel_proto": np.uint8,
    "rel_src_hi": np.uint64,
    "rel_src_lo": np.uint64,
    "rel_dst_hi": np.uint64,
    "rel_dst_lo": np.uint64,
    "rel_sport": np.uint16,
    "rel_dport": np.uint16,
    # filled by engine.flows
    "flow": np.int64,         # flow table slot, -1 for none
    "flow_id": np.uint64,     # unique id of the flow (EVE flow_id)
    "dir": np.uint8,          # 0: from the flow's initiator, 1: from its responder
    "est": np.uint8,          # 1: the connection was established (Suricata flow:established)
    # filled by engine.l7
    "app": np.uint8,          # engine.l7.APP_* of the packet's payload
    "name_id": np.int64,      # the name this row completed (names arena id), -1 none
    "l7_flags": np.uint16,    # engine.l7.L7_* (evasion signals, give-ups)
    "qtype": np.uint16,       # DNS: the question's type (1 A, 28 AAAA, ...), 0 none
    # filled by rules.match
    "rule": np.int32,         # policy catalog id of the rule that decided, -1 none
    "alert": np.int32,        # policy catalog id of an alert raised on the row, -1 none
    "action": np.uint8,       # ACT_*: a reject to send, a DNS answer to make (on dropped rows)
    # verdict of the pipeline
    "verdict": np.uint8,      # Verdict
    "reason": np.uint16,      # Reason of a drop
}


class PacketBatch:
    """Up to `capacity` packets whose frames live in `buf`.

    The reader reuses one batch: its contents are valid until the next batch is read.
    """

    def __init__(self, capacity: int, buf: np.ndarray | None = None) -> None:
        if capacity <= 0:
            raise ValueError("batch capacity must be positive")
        self.capacity = capacity
        self.buf = buf if buf is not None else np.zeros(0, dtype=np.uint8)
        self.n = 0
        for name, dtype in COLUMNS.items():
            setattr(self, name, np.zeros(capacity, dtype=dtype))

    def reset(self, n: int) -> None:
        """Start a new batch of `n` packets: clear everything stages fill."""
        if not 0 <= n <= self.capacity:
            raise ValueError(f"batch of {n} packets exceeds capacity {self.capacity}")
        self.n = n
        self.verdict[:n] = Verdict.PENDING
        self.reason[:n] = Reason.OK

    def frame(self, i: int) -> bytes:
        """The captured bytes of packet `i` as they are now in the buffer."""
        self._check(i)
        start = int(self.off[i])
        return self.buf[start:start + int(self.caplen[i])].tobytes()

    def view(self, i: int) -> dict[str, Any]:
        """Every column of packet `i` as plain Python values (debugging, tests)."""
        self._check(i)
        row: dict[str, Any] = {name: getattr(self, name)[i].item() for name in COLUMNS}
        row["verdict"] = Verdict(row["verdict"]).name
        row["reason"] = NAMES[row["reason"]]
        return row

    def summary(self, i: int) -> str:
        """One line a person can read for packet `i`."""
        r = self.view(i)
        head = f"#{i} ts={r['ts_ns']} len={r['caplen']}/{r['wirelen']} link={r['link']}"
        if r["reason"] != "ok":
            return f"{head} {r['verdict']} ({r['reason']})"
        src = ipaddress.IPv4Address(r["outer_src"])
        dst = ipaddress.IPv4Address(r["outer_dst"])
        inner = {0x0800: "IPv4", 0x86DD: "IPv6"}.get(r["gproto"], hex(r["gproto"]))
        return (f"{head} {src}:{r['outer_sport']} -> {dst}:6081 vni={r['vni']} "
                f"eni={r['gwlb_eni']:#018x} attach={r['gwlb_attach']:#018x} "
                f"cookie={r['gwlb_cookie']:#010x} inner={inner}/{r['inner_len']}B "
                f"{r['verdict']}")

    def _check(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise IndexError(f"packet {i} not in batch of {self.n}")
