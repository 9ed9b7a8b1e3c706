"""`egressd replay` end to end: what comes back is what a GWLB target must return, and
what is dropped is dropped for the reason an independent dissector (tshark) implies.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import dpkt
import numpy as np
import pytest

from conftest import CORPUS, MALFORMED, SAMPLE, egressd
from egressd.engine.pcapio import CaptureReader
from egressd.engine.pipeline import replay
from egressd.engine.reasons import N_REASONS, NAMES, STAGES, Verdict
from egressd.geneve.decap import decap
from helpers_pcap import GWLB_CAPTURE, Fields, first, scapy_records, tshark_pdml

GENEVE_MISC = sorted((CORPUS / "geneve-misc").iterdir())
MANIFEST = json.loads(MALFORMED.with_suffix(".json").read_text())
CHECKSUM_PREFS = ("ip.check_checksum:TRUE", "udp.check_checksum:TRUE")


class Outer(NamedTuple):
    """The parts of an Ethernet / IPv4 / UDP / GENEVE frame the return path may or must not touch."""

    eth_dst: bytes
    eth_src: bytes
    vlan_tags: bytes       # raw 802.1Q tags, ethertype included
    ip_src: bytes
    ip_dst: bytes
    ip_other: bytes        # every other outer IPv4 header byte but the checksum
    ip_checksum_ok: bool
    udp: bytes             # ports, length, checksum
    geneve: bytes          # base header + options
    inner: bytes
    trailer: bytes         # Ethernet padding after the IPv4 packet

    @classmethod
    def parse(cls, frame: bytes) -> Outer:
        eth = dpkt.ethernet.Ethernet(frame)
        l3 = 14 + 4 * len(getattr(eth, "vlan_tags", []))
        ip = eth.data
        assert isinstance(ip, dpkt.ip.IP) and ip.p == 17, "outer IPv4/UDP"
        hdr = frame[l3:l3 + ip.hl * 4]
        u = l3 + len(hdr)
        end = l3 + ip.len
        glen = 8 + (frame[u + 8] & 0x3F) * 4
        return cls(frame[:6], frame[6:12], frame[12:l3], hdr[12:16], hdr[16:20],
                   hdr[:10] + hdr[20:], dpkt.in_cksum(hdr) == 0, frame[u:u + 8],
                   frame[u + 8:u + 8 + glen], frame[u + 8 + glen:end], frame[end:])


def assert_returned(inp: bytes, out: bytes) -> None:
    """`out` is `inp` as a GWLB target returns it (checked part by part with dpkt)."""
    i, o = Outer.parse(inp), Outer.parse(out)
    assert (o.eth_dst, o.eth_src) == (i.eth_src, i.eth_dst), "Ethernet addresses swapped"
    assert o.vlan_tags == i.vlan_tags, "VLAN tags kept"
    assert (o.ip_src, o.ip_dst) == (i.ip_dst, i.ip_src), "outer IPv4 addresses swapped"
    assert o.ip_other == i.ip_other, "rest of the outer IPv4 header untouched"
    assert o.ip_checksum_ok, "outer IPv4 checksum valid"
    assert o.udp == i.udp, "UDP ports (and length, checksum) as received"
    assert o.geneve == i.geneve, "GENEVE header and options byte-identical"
    assert o.inner == i.inner, "inner packet untouched"
    assert o.trailer == i.trailer


@dataclass
class Replay:
    inp: Path
    out: Path
    dropped: Path
    stats: dict


def run_replay(inp: Path, workdir: Path, *flags: str) -> Replay:
    workdir.mkdir(parents=True, exist_ok=True)
    out, dropped, stats = workdir / "out.pcap", workdir / "dropped.pcap", workdir / "stats.json"
    res = egressd("replay", inp, "--out", out, "--dropped", dropped, "--stats", stats,
                  "--no-progress", *flags)
    assert res.returncode == 0, res.stderr
    return Replay(inp, out, dropped, json.loads(stats.read_text()))


def engine_reasons(path: Path, require_gwlb: bool = True, batch_packets: int = 32768) -> list[str]:
    """Drop reason ("ok" if kept) of every packet, from the decap stage in-process."""
    counts = np.zeros(N_REASONS, np.uint64)
    reasons: list[str] = []
    with CaptureReader(path, batch_packets=batch_packets) as reader:
        for b in reader:
            decap(b, counts, require_gwlb)
            drop = b.verdict[:b.n] == Verdict.DROP
            assert np.array_equal(drop, b.reason[:b.n] != 0), "dropped iff a reason is set"
            reasons += [NAMES[r] for r in b.reason[:b.n]]
    assert counts.sum() == len(reasons), "every packet counted once"
    assert dict(Counter(reasons)) == {NAMES[r]: int(c) for r, c in enumerate(counts) if c}
    return reasons


# -- well-formed GWLB traffic comes back as a target must return it -------------------

CAPTURES = {"sample": SAMPLE, "aws-gwlb": GWLB_CAPTURE, "malformed": MALFORMED}


@pytest.fixture(scope="module")
def replays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Replay]:
    return {name: run_replay(path, tmp_path_factory.mktemp(name)) for name, path in CAPTURES.items()}


def well_formed(name: str, n: int) -> list[int]:
    if name == "malformed":
        return [m["index"] for m in MANIFEST if m["expect"] == "ok"]
    return list(range(n))


@pytest.mark.parametrize("name", CAPTURES)
def test_return_path_bytes(replays: dict[str, Replay], name: str) -> None:
    rep = replays[name]
    link_in, inp = scapy_records(rep.inp)
    link_out, out = scapy_records(rep.out)
    keep = well_formed(name, len(inp))
    assert (link_in, link_out) == (1, 1)
    assert rep.stats["packets_in"] == len(inp)
    # output is the input's order minus drops
    assert len(out) == len(keep) == rep.stats["packets_forwarded"]
    for k, i in enumerate(keep):
        assert (out[k].ts_ns, out[k].wirelen) == (inp[i].ts_ns, inp[i].wirelen), f"packet {i}"
        assert_returned(inp[i].frame, out[k].frame)


def _geneve_fields(p: Fields) -> Fields:
    return {k: v for k, v in p.items() if k.startswith("geneve.")}


@pytest.mark.parametrize("name", CAPTURES)
def test_return_path_tshark(replays: dict[str, Replay], name: str, tshark: str) -> None:
    rep = replays[name]
    inp = tshark_pdml(rep.inp, *CHECKSUM_PREFS)
    out = tshark_pdml(rep.out, *CHECKSUM_PREFS)
    keep = well_formed(name, len(inp))
    assert len(out) == len(keep)
    for o, i in zip(out, (inp[k] for k in keep)):
        assert first(o, "ip.checksum.status") == "1", "outer IPv4 checksum good"
        assert first(o, "udp.checksum.status") == "1" or first(o, "udp.checksum") == "0x0000"
        assert (first(o, "eth.src"), first(o, "eth.dst")) == (first(i, "eth.dst"), first(i, "eth.src"))
        assert (first(o, "ip.src"), first(o, "ip.dst")) == (first(i, "ip.dst"), first(i, "ip.src"))
        assert (first(o, "udp.srcport"), first(o, "udp.dstport")) == \
            (first(i, "udp.srcport"), first(i, "udp.dstport"))
        assert o.get("vlan.id") == i.get("vlan.id")
        assert [c for c, _ in i["geneve.option.class"]].count("0x0108") == 3, "GWLB input"
        assert _geneve_fields(o) == _geneve_fields(i)
        assert o["frame.protocols"] == i["frame.protocols"], "inner dissects the same"


# -- malformed sample: one packet per drop reason -------------------------------------

def test_malformed_reasons_in_process() -> None:
    # small batches so that per-batch state (columns, counters) is crossed too
    got = engine_reasons(MALFORMED, batch_packets=5)
    assert [m["index"] for m in MANIFEST] == list(range(len(got)))
    assert [(m["index"], got[m["index"]], m["what"]) for m in MANIFEST] == \
        [(m["index"], m["expect"], m["what"]) for m in MANIFEST]


def test_malformed_stats_and_dropped_file(replays: dict[str, Replay]) -> None:
    rep = replays["malformed"]
    expected = Counter(m["expect"] for m in MANIFEST if m["expect"] != "ok")
    s = rep.stats
    assert s["drops"] == dict(expected)
    assert s["packets_dropped"] == sum(expected.values()) == s["packets_in"] - s["packets_forwarded"]
    by_stage = Counter()
    for reason, n in expected.items():
        by_stage[STAGES[NAMES.index(reason)]] += n
    assert s["drops_by_stage"] == dict(by_stage)
    assert s["outputs"]["dropped_not_written"] == 0
    _, inp = scapy_records(rep.inp)
    link, dropped = scapy_records(rep.dropped)
    assert link == 1
    assert dropped == [inp[m["index"]] for m in MANIFEST if m["expect"] != "ok"]
    assert s["bytes_dropped"] == sum(len(r.frame) for r in dropped)


# -- other GENEVE sources: reasons follow what tshark decodes -------------------------

def expected_reason(p: Fields, require_gwlb: bool) -> str:
    """The reason egressd's documented check order gives a packet, from tshark's
    dissection (only the checks these captures can reach)."""
    if int(first(p, "frame.cap_len")) < int(first(p, "frame.len")):
        return "capture_truncated"
    if first(p, "eth.type") != "0x0800":
        return "outer_not_ipv4" if first(p, "eth.type") == "0x86dd" else "link_not_ip"
    # tshark shows a total length of 0 (GSO) as the frame's; the raw field is the truth
    if int(p["ip.len"][0][1], 16) < int(first(p, "ip.hdr_len")):
        return "outer_ip_bad_header"
    if first(p, "ip.checksum.status") == "0":
        return "outer_ip_bad_checksum"
    if first(p, "ip.flags.mf") == "1" or first(p, "ip.frag_offset") != "0":
        return "outer_ip_fragment"
    if first(p, "udp.dstport") != "6081":
        return "not_geneve_port"
    options = [(c, int(t, 16)) for (c, _), (t, _) in
               zip(p.get("geneve.option.class", []), p.get("geneve.option.type", []))]
    if any(t & 0x80 for _, t in options):
        return "geneve_unknown_critical"
    if first(p, "geneve.proto_type") not in ("0x0800", "0x86dd"):
        return "geneve_bad_protocol"
    if require_gwlb and sorted(t for c, t in options if c == "0x0108") != [1, 2, 3]:
        return "gwlb_options_missing"
    return "ok"


@pytest.fixture(scope="module")
def misc_dissected(tshark: str) -> dict[Path, list[Fields]]:
    return {path: tshark_pdml(path, "ip.check_checksum:TRUE") for path in GENEVE_MISC}


@pytest.mark.parametrize("path", GENEVE_MISC, ids=lambda p: p.name)
def test_other_geneve_sources(path: Path, tmp_path: Path, misc_dissected: dict[Path, list[Fields]]) -> None:
    pkts = misc_dissected[path]
    for require_gwlb in (True, False):
        assert engine_reasons(path, require_gwlb) == [expected_reason(p, require_gwlb) for p in pkts]

    # the pipeline in-process: the CLI only adds the JSON dump, tested on the captures above
    s = replay(path, tmp_path / "out.pcap", tmp_path / "dropped.pcap").to_dict()
    want = Counter(expected_reason(p, True) for p in pkts)
    assert s["packets_in"] == len(pkts) == s["packets_forwarded"] + s["packets_dropped"]
    assert s["packets_forwarded"] == want.pop("ok", 0) == 0, "none of these is GWLB traffic"
    assert s["drops"] == dict(want)
    assert sum(s["drops_by_stage"].values()) == s["packets_dropped"]


def test_corpus_covers_the_interesting_reasons(misc_dissected: dict[Path, list[Fields]]) -> None:
    """Guard for the test above: the corpus reaches these checks, and accepts some
    packets once GWLB's options are not required."""
    pkts = [p for dissected in misc_dissected.values() for p in dissected]
    assert "ok" in {expected_reason(p, False) for p in pkts}
    seen = {expected_reason(p, True) for p in pkts}
    assert {"capture_truncated", "outer_not_ipv4", "outer_ip_bad_header", "geneve_unknown_critical",
            "geneve_bad_protocol", "gwlb_options_missing"} <= seen


def test_accept_non_gwlb_returns_gcp_packet(tmp_path: Path) -> None:
    gcp = CORPUS / "geneve-misc" / "tcpdump-geneve-gcp.pcap"
    rep = run_replay(gcp, tmp_path, "--accept-non-gwlb")
    assert (rep.stats["packets_forwarded"], rep.stats["packets_dropped"]) == (1, 0)
    (_, (inp,)), (_, (out,)) = scapy_records(gcp), scapy_records(rep.out)
    assert Outer.parse(inp.frame).inner[0] >> 4 == 4, "inner IPv4"
    assert_returned(inp.frame, out.frame)
