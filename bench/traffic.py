"""Large synthetic GWLB captures, made fast enough for benchmarks.

A handful of template frames (one per inner packet size) is built once with
`struct`; numpy then tiles them into millions of pcap records and writes the
per-flow fields into the copies (GWLB's UDP source port and flow cookie outside,
the client's address and TCP port inside), patching the inner IPv4 and TCP
checksums incrementally (RFC 1624) so that every checksum in the file stays valid.
No per-packet Python runs, so a million packets take a few seconds.

Every frame is what GWLB delivers to a target: Ethernet / IPv4 / UDP 6081 (UDP
checksum 0, legal over IPv4) / GENEVE with the three class-0x0108 options / an
inner IPv4 TCP segment.  Sequence numbers do not advance within a flow (tshark calls
the segments out of order): nothing that benchmarks the pass-through looks at them.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Inner IP packet sizes and weights: the simple IMIX (7:4:1 of 40/576/1500-byte IP
# packets, with 60 for a minimal TCP segment with options).  GWLB adds 68 bytes and
# Ethernet 14, so frames are 142 / 658 / 1582 bytes, 434 on average.
IMIX: tuple[tuple[int, float], ...] = ((60, 7.0), (576, 4.0), (1500, 1.0))

GWLB_MAC = bytes.fromhex("02000a000a4a")
APPLIANCE_MAC = bytes.fromhex("02000a000840")
GWLB_IP = bytes([10, 0, 10, 74])
APPLIANCE_IP = bytes([10, 0, 8, 64])
CLIENT_NET = bytes([10, 1])          # inner source 10.1.x.y, x.y from the flow number
SERVER_IP = bytes([198, 51, 100, 10])
ENDPOINT_ID = 0x0A1B2C3D4E5F6071
ATTACHMENT_ID = 0x1122334455667788
EPOCH_S = 1_700_000_000

ETH_LEN, OUTER_LEN = 14, 68          # 68 = IPv4 20 + UDP 8 + GENEVE 8 + options 32
MIN_INNER, MAX_INNER = 40, 8500 - OUTER_LEN  # TCP/IPv4 headers; GWLB's 8500-byte MTU
# Offsets in the frame of the fields written per packet.
UDP_SPORT = ETH_LEN + 20
COOKIE = ETH_LEN + 20 + 8 + 8 + 12 + 12 + 4
INNER = ETH_LEN + OUTER_LEN
INNER_CSUM, INNER_SRC_LO = INNER + 10, INNER + 14
TCP_SPORT, TCP_CSUM = INNER + 20, INNER + 36

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)  # microseconds
RECORD = 16
CHUNK_BYTES = 32 << 20  # bounds the temporaries of one tiling step


def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _template(inner_len: int, rng: np.random.Generator) -> bytes:
    """One GWLB frame whose per-flow fields are zero (the checksums cover those zeros)."""
    payload = rng.integers(0, 256, inner_len - 40, dtype=np.uint8).tobytes()
    tcp_nosum = struct.pack("!HHIIBBHHH", 0, 443, 1, 1, 5 << 4, 0x18, 64240, 0, 0) + payload
    src = CLIENT_NET + b"\0\0"
    pseudo = src + SERVER_IP + struct.pack("!BBH", 0, 6, len(tcp_nosum))
    tcp = tcp_nosum[:16] + struct.pack("!H", ~_ones_sum(pseudo + tcp_nosum) & 0xFFFF) + tcp_nosum[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, inner_len, 0, 0x4000, 64, 6, 0, src, SERVER_IP)
    inner = ip[:10] + struct.pack("!H", ~_ones_sum(ip) & 0xFFFF) + ip[12:] + tcp
    options = (struct.pack("!HBBQ", 0x0108, 1, 2, ENDPOINT_ID)
               + struct.pack("!HBBQ", 0x0108, 2, 2, ATTACHMENT_ID)
               + struct.pack("!HBBI", 0x0108, 3, 1, 0))
    geneve = struct.pack("!BBHI", len(options) // 4, 0, 0x0800, 0) + options
    udp = struct.pack("!HHHH", 0, 6081, 8 + len(geneve) + inner_len, 0)
    outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + len(geneve) + inner_len,
                        0, 0x4000, 255, 17, 0, GWLB_IP, APPLIANCE_IP)
    outer = outer[:10] + struct.pack("!H", ~_ones_sum(outer) & 0xFFFF) + outer[12:]
    return APPLIANCE_MAC + GWLB_MAC + b"\x08\x00" + outer + udp + geneve + inner


def _put(buf: np.ndarray, pos: np.ndarray, values: np.ndarray, width: int, big: bool = True) -> None:
    for k in range(width):
        shift = 8 * (width - 1 - k if big else k)
        buf[pos + k] = (values >> shift) & 0xFF


def _csum_add(csum: np.ndarray, *words: np.ndarray) -> np.ndarray:
    """Checksums of headers whose zero 16-bit words became `words` (RFC 1624, eqn. 3)."""
    s = (~csum & 0xFFFF).astype(np.uint64)
    for w in words:
        s += w
    for _ in range(2):
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def make_capture(path: str | os.PathLike, packets: int,
                 inner_sizes: Sequence[tuple[int, float]] = IMIX,
                 flows: int = 4096, seed: int = 0) -> Path:
    """Write a pcap of `packets` GWLB frames to `path`; return the path.

    `inner_sizes` is (inner IP packet length, weight) pairs: each packet draws one;
    its frame is 82 bytes longer.  Packets belong to `flows` flows drawn uniformly,
    and are 1 us apart.  The same arguments always give the same bytes.
    """
    if packets < 0 or not 1 <= flows <= 0xFFFF:
        raise ValueError("need packets >= 0 and 1 <= flows <= 65535")
    sizes = np.array([s for s, _ in inner_sizes], dtype=np.int64)
    weights = np.array([w for _, w in inner_sizes], dtype=np.float64)
    if not len(sizes) or sizes.min() < MIN_INNER or sizes.max() > MAX_INNER or (weights <= 0).any():
        raise ValueError(f"inner sizes must be {MIN_INNER}..{MAX_INNER} bytes with positive weights")
    rng = np.random.default_rng(seed)
    frames = [_template(int(s), rng) for s in sizes]
    # Templates laid end to end as whole records (timestamps filled per packet).
    rec_len = np.array([RECORD + len(f) for f in frames], dtype=np.int64)
    blob = np.frombuffer(b"".join(struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in frames),
                         dtype=np.uint8)
    blob_at = np.concatenate(([0], np.cumsum(rec_len)[:-1]))
    base_csum = np.array([[struct.unpack_from("!H", f, at)[0] for at in (INNER_CSUM, TCP_CSUM)]
                          for f in frames], dtype=np.uint64)
    gwlb_sport = rng.integers(1024, 65536, flows, dtype=np.uint64)
    cookie = rng.integers(0, 1 << 32, flows, dtype=np.uint64)
    client_lo = np.arange(1, flows + 1, dtype=np.uint64) & 0xFFFF  # 10.1.0.1 upward
    client_port = 32768 + np.arange(flows, dtype=np.uint64) % 28232
    kind = rng.choice(len(sizes), size=packets, p=weights / weights.sum())
    flow = rng.integers(0, flows, packets)

    step = max(1, CHUNK_BYTES // int(rec_len.max()))
    path = Path(path)
    with open(path, "wb") as f:
        f.write(PCAP_HEADER)
        for lo in range(0, packets, step):
            t, fl = kind[lo:lo + step], flow[lo:lo + step]
            lens = rec_len[t]
            at = np.concatenate(([0], np.cumsum(lens)[:-1]))
            out = blob[np.repeat(blob_at[t] - at, lens) + np.arange(int(lens.sum()))]
            i = np.arange(lo, lo + len(t), dtype=np.uint64)
            _put(out, at, EPOCH_S + i // 1_000_000, 4, big=False)
            _put(out, at + 4, i % 1_000_000, 4, big=False)
            fr = at + RECORD
            _put(out, fr + UDP_SPORT, gwlb_sport[fl], 2)
            _put(out, fr + COOKIE, cookie[fl], 4)
            _put(out, fr + INNER_SRC_LO, client_lo[fl], 2)
            _put(out, fr + TCP_SPORT, client_port[fl], 2)
            _put(out, fr + INNER_CSUM, _csum_add(base_csum[t, 0], client_lo[fl]), 2)
            # The TCP checksum covers the source address through the pseudo-header.
            _put(out, fr + TCP_CSUM, _csum_add(base_csum[t, 1], client_lo[fl], client_port[fl]), 2)
            f.write(out.data)
    return path
