"""bench/gen.py: the benchmark traffic generator, checked against tshark and egressd.

One capture of a few thousand packets per traffic mix (each kind alone, and the
default mix), each with IPv6 flows, split ClientHellos, swapped segments and its own
packet sizes.  tshark must read every one without a malformed packet or a bad checksum;
the names tshark reads per flow must be the names the generator planned, and egressd's
pipeline must attach the same names to the same frames (passing every packet, with
nothing malformed).  The GWLB wrapping must be byte for byte what
pcaps/make_samples.gwlb_frame builds, and the same arguments must give the same bytes
in another process, and however the flows are grouped for scheduling.
"""
from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from gwlb import Endpoint, gwlb_frame
from test_names import egressd_names

from egressd.bench import gen
from egressd.bench.gen import (K_DNS, K_HTTP, K_QUIC, K_TLS, KINDS, Plan, generate, plan,
                               server_address)
from egressd.engine.flows import FlowConfig
from egressd.engine.pcapio import CaptureReader
from egressd.engine.pipeline import Pipeline
from egressd.engine.reasons import Verdict

# A name of every shape: one label, upper case, digits and hyphens, 253 bytes long.
LONG = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
NAMES = ["pkgs.example.com", "Mirror.Example.NET", "intranet", "cdn-1.s3.eu-west-1.example.org",
         "x.co", LONG, "api.github.example", "a1b2c3.d4e5f6.example.co.uk"]
COMMON = dict(flows=260, packets_per_flow=11, names=NAMES, ipv6_share=0.3, endpoints=4,
              split_client_hello_share=0.4, out_of_order_share=0.4)
CASES = {
    "default": dict(seed=1),
    "tls-64": dict(mix={"tls": 1}, sizes="64", seed=2),
    "http-jumbo": dict(mix={"http": 1}, sizes="jumbo", seed=3),
    "dns": dict(mix={"dns": 1}, seed=4),
    "quic-1500": dict(mix={"quic": 1}, sizes="1500", seed=5),
    "udp-64": dict(mix={"udp": 1}, sizes="64", seed=6),
    "icmp-jumbo": dict(mix={"icmp": 1}, sizes="jumbo", seed=7),
}
CHECKSUMS = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
             "-o", "udp.check_checksum:TRUE"]
REASSEMBLY = ["-o", "tls.desegment_ssl_records:TRUE", "-o", "tcp.desegment_tcp_streams:TRUE",
              "-o", "tcp.reassemble_out_of_order:TRUE"]
FIELDS = ("frame.number", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport",
          "tcp.dstport", "udp.srcport", "udp.dstport", "icmp.ident", "icmpv6.echo.identifier",
          "tcp.len", "tcp.stream", "tcp.reassembled_in", "tcp.analysis.out_of_order",
          "tls.handshake.extensions_server_name", "http.request.method", "http.host",
          "dns.qry.name", "dns.a", "dns.aaaa")


class Capture:
    """A generated capture, its plan, and what tshark reads in it."""

    def __init__(self, path: Path, kw: dict) -> None:
        self.path = path
        self.kw = kw
        self.plan: Plan = plan(**kw)
        self.counts = generate(path, **kw)
        self.flow_of = {(self.plan.client_ip(i), int(self.plan.client_port[i])): i
                        for i in range(self.plan.flows)}
        self.rows = [dict(zip(FIELDS, line.split("\t"))) for line in _tshark(
            path, "-2", *REASSEMBLY, "-T", "fields", "-E", "occurrence=l",
            *[x for f in FIELDS for x in ("-e", f)]).splitlines()]

    def flow(self, r: dict) -> int:
        """The plan's flow of a tshark row, by the inner client address and port (the
        other end must be the flow's server)."""
        src, dst = (r["ipv6.src"], r["ipv6.dst"]) if r["ipv6.src"] else (r["ip.src"], r["ip.dst"])
        if r["tcp.srcport"]:
            ports = r["tcp.srcport"], r["tcp.dstport"]
        elif r["icmp.ident"] or r["icmpv6.echo.identifier"]:
            ports = (r["icmp.ident"] or r["icmpv6.echo.identifier"],) * 2
        else:
            ports = r["udp.srcport"], r["udp.dstport"]
        for key, other in (((src, int(ports[0], 0)), dst), ((dst, int(ports[1], 0)), src)):
            if key in self.flow_of:
                i = self.flow_of[key]
                assert other == self.plan.server_ip(i), r
                return i
        raise AssertionError(f"frame {r['frame.number']} belongs to no planned flow")

    def names_by_frame(self) -> dict[int, str]:
        """frame -> name, by tests/test_names.py's rules: TLS SNI (TCP or QUIC), the Host
        of a connection's first HTTP request, the query name of DNS on port 53."""
        out: dict[int, str] = {}
        http_streams: set[str] = set()
        for r in self.rows:
            frame = int(r["frame.number"])
            if r["tls.handshake.extensions_server_name"]:
                out[frame] = r["tls.handshake.extensions_server_name"]
            elif r["http.request.method"] and r["tcp.stream"] not in http_streams:
                http_streams.add(r["tcp.stream"])
                out[frame] = r["http.host"]
            elif r["dns.qry.name"] and "53" in (r["udp.srcport"], r["udp.dstport"]):
                out[frame] = r["dns.qry.name"]
        return {k: v.lower().rstrip(".") for k, v in out.items()}


def _tshark(path: Path, *args: str) -> str:
    return subprocess.run(["tshark", "-r", str(path), *args], capture_output=True, text=True,
                          check=True, timeout=120).stdout


@pytest.fixture(scope="module")
def captures(tmp_path_factory, tshark) -> dict[str, Capture]:
    folder = tmp_path_factory.mktemp("gen")
    return {name: Capture(folder / f"{name}.pcap", {**COMMON, **kw}) for name, kw in CASES.items()}


@pytest.mark.parametrize("case", CASES)
def test_tshark_finds_nothing_malformed_and_no_bad_checksum(case: str, captures) -> None:
    cap = captures[case]
    report = _tshark(cap.path, "-q", *CHECKSUMS, *REASSEMBLY, "-z", "expert")
    assert "Errors (" not in report, report          # malformed packets and bad checksums
    assert "Malformed" not in report and "checksum" not in report.lower(), report
    # every planned flow is in the file, with the packets the counts say
    flows = [cap.flow(r) for r in cap.rows]
    assert set(flows) == set(range(cap.plan.flows))
    assert Counter(KINDS[cap.plan.kind[f]] for f in flows) == Counter(
        {k: cap.counts[k]["packets"] for k in KINDS if cap.counts[k]["packets"]})


@pytest.mark.parametrize("case", CASES)
def test_names_per_flow_are_the_plan(case: str, captures) -> None:
    """Every flow of a named kind shows tshark exactly its planned name; others none."""
    cap = captures[case]
    seen: dict[int, set[str]] = {}
    for frame, name in cap.names_by_frame().items():
        seen.setdefault(cap.flow(cap.rows[frame - 1]), set()).add(name)
    expected = {i: {cap.plan.flow_name(i).lower()} for i in range(cap.plan.flows)
                if cap.plan.flow_name(i) is not None}
    assert seen == expected
    # DNS answers the address of the name's server, where its TLS/HTTP/QUIC flows go
    answers = 0
    for r in cap.rows:
        if r["dns.a"] or r["dns.aaaa"]:
            name = int(cap.plan.name[cap.flow(r)])
            assert r["dns.a"] in ("", server_address(name, False))
            assert r["dns.aaaa"] in ("", server_address(name, True))
            answers += 1
    assert answers == cap.counts["dns"]["packets"] // 2


def test_egressd_passes_and_reads_every_flow(captures) -> None:
    """No drop, nothing malformed, no search given up; one name per TLS/HTTP/QUIC flow,
    one per DNS message; exactly the split ClientHellos reassembled."""
    cap = captures["default"]
    pipe = Pipeline(flows=FlowConfig(capacity=4096))
    passed = 0
    with CaptureReader(cap.path, extra_bytes=pipe.extra_bytes) as reader:
        for b in reader:
            pipe.process(b, reader.extra_base)
            passed += int((b.verdict[:b.n] == Verdict.PASS).sum())
    c = pipe.l7.counters()
    n = cap.counts
    assert passed == n["total"]["packets"]
    assert c["malformed"] == c["gave_up"] == c["overlaps"] == c["pool_exhausted"] == 0
    assert (c["tls_names"], c["http_names"], c["quic_names"], c["dns_names"]) == (
        n["tls"]["flows"], n["http"]["flows"], n["quic"]["flows"], n["dns"]["packets"])
    assert c["reassembled"] == n["split_client_hellos"] > 0


@pytest.mark.parametrize("case", CASES)
def test_egressd_attaches_the_names_tshark_reads(case: str, captures) -> None:
    """Frame by frame, as tests/test_names.py compares the real-client captures."""
    cap = captures[case]
    names, apps = egressd_names(cap.path)
    assert names == cap.names_by_frame()
    app_of = {K_TLS: "tls", K_HTTP: "http", K_DNS: "dns", K_QUIC: "quic"}
    for frame, app in apps.items():
        assert app == app_of[int(cap.plan.kind[cap.flow(cap.rows[frame - 1])])]


@pytest.mark.parametrize("case", ["default", "tls-64", "http-jumbo"])
def test_split_hellos_and_swapped_segments(case: str, captures) -> None:
    """tshark reassembles exactly the planned split ClientHellos (in 2-4 segments) and
    flags exactly one out-of-order segment in each flow the plan swapped."""
    cap = captures[case]
    p = cap.plan
    split: dict[int, int] = {}
    pieces: dict[int, int] = {}
    ooo: dict[int, int] = {}
    for r in cap.rows:
        if not r["tcp.srcport"]:
            continue
        f = cap.flow(r)
        to_server = int(r["tcp.dstport"]) in (443, 80)
        if to_server and r["tcp.reassembled_in"]:
            split[f] = split.get(f, 0) + 1
        if to_server and int(r["tcp.len"]) > 0:
            pieces[f] = pieces.get(f, 0) + 1
        if r["tcp.analysis.out_of_order"]:
            ooo[f] = ooo.get(f, 0) + 1
    planned = {i: int(p.pieces[i]) - 1 for i in range(p.flows) if p.pieces[i] > 1}
    assert split == planned
    assert pieces == {i: int(p.pieces[i]) for i in range(p.flows) if p.kind[i] in (K_TLS, K_HTTP)}
    assert ooo == {i: 1 for i in range(p.flows) if p.out_of_order[i]}
    assert cap.counts["split_client_hellos"] == len(planned)
    assert cap.counts["out_of_order"] == len(ooo)
    if case != "http-jumbo":
        assert len(planned) > 10 and len(ooo) > 10     # the shares were honoured at all
        assert {n + 1 for n in planned.values()} == {2, 3, 4}


def test_wrapping_is_make_samples_gwlb_frame(captures) -> None:
    """Each frame is make_samples.gwlb_frame of its inner packet, with the flow's
    endpoint, cookie and GWLB source port; both directions of a flow share them."""
    cap = captures["default"]
    p = cap.plan
    with open(cap.path, "rb") as f:
        frames = [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]
    assert len(frames) == len(cap.rows)
    for r, frame in zip(cap.rows, frames):
        i = cap.flow(r)
        ep = Endpoint(int(p.endpoint_id[p.endpoint[i]]), int(p.attachment_id[p.endpoint[i]]))
        assert frame == gwlb_frame(frame[82:], ep, int(p.cookie[i]), int(p.gwlb_port[i])), r


def test_pcap_header_and_time_order(captures) -> None:
    cap = captures["default"]
    data = cap.path.read_bytes()
    magic, major, minor, _, _, snaplen, link = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, link) == (0xA1B23C4D, 2, 4, 1) and snaplen >= 8582
    with open(cap.path, "rb") as f:
        stamps = [ts for ts, _ in dpkt.pcap.Reader(f)]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    frames = len(data) - 24 - 16 * len(stamps)
    assert frames == cap.counts["total"]["bytes"]


def test_same_seed_same_bytes_in_another_process(tmp_path: Path, captures) -> None:
    """ssl and aioquic draw fresh randoms in every process: the generator must not let
    them through."""
    kw = {**COMMON, **CASES["default"]}
    again = tmp_path / "again.pcap"
    code = ("from egressd.bench.gen import generate; import json, sys; "
            "generate(sys.argv[1], **json.loads(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, str(again), json.dumps(kw)], check=True,
                   timeout=300)
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(again) == digest(captures["default"].path)
    other = tmp_path / "other.pcap"
    generate(other, **{**kw, "seed": 99})
    assert digest(other) != digest(again)


def test_bytes_do_not_depend_on_scheduling_groups(tmp_path: Path, captures,
                                                  monkeypatch) -> None:
    """Flows scheduled a few hundred packets at a time (packets waiting for later groups)
    give the very bytes of one group."""
    monkeypatch.setattr(gen, "GROUP_PACKETS", 300)
    small = tmp_path / "groups.pcap"
    counts = generate(small, **{**COMMON, **CASES["default"]})
    assert small.read_bytes() == captures["default"].path.read_bytes()
    assert counts == captures["default"].counts


@pytest.mark.parametrize("bad", [
    dict(mix={"smtp": 1}), dict(mix={"tls": 0}), dict(sizes="9000"), dict(names=[]),
    dict(names=["10.0.0.1"]), dict(names=["under_score.example"]), dict(names=["a" * 64 + ".com"]),
    dict(names=["trailing.dot."]), dict(ipv6_share=1.5), dict(flows=0), dict(endpoints=0),
])
def test_rejects_bad_arguments(bad: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path / "x.pcap", **{"flows": 4, "packets_per_flow": 4, **bad})
