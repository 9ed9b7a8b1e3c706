"""Build GWLB-encapsulated frames in tests, with the same code that makes pcaps/.

`wrap(inner)` gives the Ethernet frame GWLB would send a target for one inner IP
packet; `write_pcap` stores frames as a capture the engine can read.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pcaps"))

from make_samples import Endpoint, gwlb_frame  # noqa: E402

import helpers_pcap  # noqa: E402
from helpers_pcap import Record  # noqa: E402

ENDPOINT = Endpoint(endpoint_id=0x0A1B2C3D4E5F6071, attachment_id=0x00000000000A0001)
OTHER_ENDPOINT = Endpoint(endpoint_id=0x0B2C3D4E5F607182, attachment_id=0x00000000000B0002)


def wrap(inner: bytes, endpoint: Endpoint = ENDPOINT, cookie: int = 0x1234,
         gwlb_port: int = 40000) -> bytes:
    """Ethernet / IPv4 / UDP 6081 / GENEVE with GWLB's three options / inner."""
    return gwlb_frame(inner, endpoint, cookie, gwlb_port)


def write_pcap(path: Path, frames: Iterable[bytes], ts_ns: Iterable[int] | None = None) -> Path:
    """A nanosecond Ethernet pcap of `frames`, one second apart unless `ts_ns` says."""
    frames = list(frames)
    stamps = list(ts_ns) if ts_ns is not None else [i * 1_000_000_000 for i in range(len(frames))]
    return helpers_pcap.write_pcap(path, [Record(t, f, len(f)) for t, f in zip(stamps, frames)])
