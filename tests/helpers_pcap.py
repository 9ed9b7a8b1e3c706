"""Capture helpers shared by the test modules: build files by hand, read them back
with independent readers (dpkt, tshark) and with the engine.
"""
from __future__ import annotations

import struct
import subprocess
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import dpkt
from scapy.utils import RawPcapReader

from conftest import CORPUS

# A real capture of AWS GWLB traffic (class 0x0108 options; GRE and HTTP inside).
GWLB_CAPTURE = CORPUS / "suricata-verify" / "bug-6402-01" / "input.pcap"
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D


class Record(NamedTuple):
    """One captured packet as a reader reports it."""

    ts_ns: int
    frame: bytes
    wirelen: int


def pcap_bytes(records: list[Record], *, nsec: bool = True, big: bool = False,
               linktype: int = 1) -> bytes:
    """A whole pcap file, built with struct (no capture library in the loop)."""
    e = ">" if big else "<"
    out = [struct.pack(e + "IHHiIII", PCAP_MAGIC_NS if nsec else PCAP_MAGIC_US, 2, 4, 0, 0,
                       262144, linktype)]
    unit = 1 if nsec else 1000
    for r in records:
        sec, frac = divmod(r.ts_ns, 1_000_000_000)
        out.append(struct.pack(e + "IIII", sec, frac // unit, len(r.frame), r.wirelen) + r.frame)
    return b"".join(out)


def write_pcap(path: Path, records: list[Record], **kw) -> Path:
    path.write_bytes(pcap_bytes(records, **kw))
    return path


def dpkt_records(path: Path) -> list[Record]:
    """Packets as dpkt reads them (pcap or single-interface pcapng).

    dpkt gives a Decimal for nanosecond pcap and a float otherwise; a float is only
    exact enough for microsecond files, which is what callers pass.  dpkt does not
    report the wire length: it is set to the captured length.
    """
    with open(path, "rb") as f:
        out = []
        for ts, frame in dpkt.pcap.UniversalReader(f):
            ns = int(ts * 10**9) if isinstance(ts, Decimal) else round(ts * 1_000_000) * 1000
            out.append(Record(ns, bytes(frame), len(frame)))
    return out


def scapy_records(path: Path) -> tuple[int, list[Record]]:
    """(link type, packets) of a pcap as scapy's raw reader sees them, wire length included."""
    with RawPcapReader(str(path)) as reader:
        unit = 1 if reader.nano else 1000
        recs = [Record(m.sec * 1_000_000_000 + m.usec * unit, bytes(d), m.wirelen) for d, m in reader]
        return reader.linktype, recs


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    """One row per packet of the first occurrence of each field."""
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=f", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    return [line.split("|") for line in res.stdout.splitlines()]


Fields = dict[str, list[tuple[str, str]]]


def tshark_pdml(path: Path, *prefs: str) -> list[Fields]:
    """Every dissected field of every packet: name -> [(shown value, raw hex)], in
    frame order (so the first entry of `ip.src` is the outer header's)."""
    cmd = ["tshark", "-r", str(path), "-T", "pdml"]
    for p in prefs:
        cmd += ["-o", p]
    res = subprocess.run(cmd, capture_output=True, check=True, timeout=120)
    packets = []
    for pkt in ET.fromstring(res.stdout).iter("packet"):
        fields: Fields = {}
        for f in pkt.iter("field"):
            if f.get("name"):
                fields.setdefault(f.get("name"), []).append((f.get("show", ""), f.get("value", "")))
        packets.append(fields)
    return packets


def first(p: Fields, name: str) -> str:
    """Shown value of the first (outermost) occurrence of a field, '' if absent."""
    return p[name][0][0] if name in p else ""
