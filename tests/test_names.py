"""The names egressd reads on the wire equal the names tshark reads, frame by frame.

Captures: the real clients of pcaps/clients/ (curl, openssl, Python ssl, Chromium,
HTTP, DNS) and Suricata's regression captures (wrapped here in GWLB GENEVE the way
GWLB would send them).  For every frame, tshark's TLS SNI (TCP or QUIC), the Host of
the first HTTP request of a connection, and the DNS query name (UDP port 53, and the
first query of a TCP connection) must be exactly the names egressd attaches to the
same frames -- no name missed, none extra, none different.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import dpkt
import numpy as np
import pytest

from conftest import CORPUS, PCAPS
from gwlb import wrap, write_pcap

from egressd.engine.l7 import APP_NAMES
from egressd.engine.pcapio import CaptureReader
from egressd.engine.pipeline import Pipeline

CLIENTS = sorted((PCAPS / "clients").glob("*.pcap"))
SURICATA = [
    "tls_tls-client-hello-frag-01/dump_mtu300.pcap", "bug-2646-01/input.pcap",
    "bug-2646-02/input.pcap", "bug-5758/input.pcap", "community-id-ipv4/input.pcap",
    "community-id-ipv6/input.pcap", "tls_tls13-draft28/tls13_draft28.pcap", "tls_tls-random/input.pcap",
    "bug-7264-tcp-3whs-ack-data-tls-01/input.pcap", "quic-ietf/input.pcap", "quic-v2/input.pcap",
    "quic-frag/input.pcap", "quic-frag-unordered/input.pcap", "quic-initial-not-first/input.pcap",
    "bug-7199/TLPW-curl-http-suricata.pcap", "bug-814/input.pcap", "bug-7851-01/connect.pcap",
    "http-ipv6/input.pcap", "bug-2430/backwards.pcap", "domain-keyword/input.pcap",
    "detect-content-ends-with-negated-01/input.pcap", "datasets-04-http-dns/input.pcap",
    "datasets-match-subdomain/input.pcap", "detect-dotprefix-01/input.pcap",
    "detect-dotprefix-02/input.pcap", "detect-dotprefix-03/input.pcap",
    "dns_dns-query_dns-detect-query-01/input.pcap", "dns_dns-query_dns-detect-query-02/input.pcap",
    "dns_dns-query_dns-detect-query-03/input.pcap", "dns_dns-query_dns-detect-query-04/input.pcap",
    "dns_dns-query_dns-detect-query-05/input.pcap", "dns_dns-rcode/input.pcap",
]
FIELDS = ("frame.number", "tcp.stream", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport",
          "tls.handshake.extensions_server_name", "http.request.method", "http.host", "dns.qry.name",
          "dns.flags.response")


def _ip_packets(path: Path) -> list[tuple[int, bytes]]:
    """(ns timestamp, IP packet) of every packet of a capture, whatever its link type."""
    with open(path, "rb") as f:
        reader = dpkt.pcap.UniversalReader(f)
        link = reader.datalink()
        out = []
        for ts, frame in reader:
            if link == dpkt.pcap.DLT_EN10MB:
                eth = dpkt.ethernet.Ethernet(frame)
                if not isinstance(eth.data, (dpkt.ip.IP, dpkt.ip6.IP6)):
                    continue
                ip = bytes(eth.data)
            elif link == dpkt.pcap.DLT_LINUX_SLL:
                ip = frame[16:]
            elif link in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
                ip = frame[4:]
            else:
                ip = frame
            out.append((int(round(float(ts) * 1e9)), ip))
    return out


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory) -> dict[str, Path]:
    """Suricata's captures wrapped in GWLB GENEVE, one file each."""
    out = {}
    folder = tmp_path_factory.mktemp("gwlb")
    for rel in SURICATA:
        pkts = _ip_packets(CORPUS / "suricata-verify" / rel)
        name = rel.replace("/", "_")
        out[rel] = write_pcap(folder / name, [wrap(ip) for _, ip in pkts], [t for t, _ in pkts])
    return out


def tshark_names(path: Path) -> dict[int, str]:
    """frame number -> the name egressd must attach to that frame, per tshark."""
    # the last occurrence of a field is the inner packet's (the outer UDP is GENEVE's)
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=l",
           "-o", "tls.desegment_ssl_records:TRUE", "-o", "tcp.desegment_tcp_streams:TRUE"]
    for f in FIELDS:
        cmd += ["-e", f]
    rows = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    names: dict[int, str] = {}
    http_streams: set[str] = set()
    dns_streams: set[str] = set()
    for line in rows:
        (frame, stream, tsport, tdport, usport, udport, sni, method, host, qname,
         response) = (line.split("\t") + [""] * 11)[:11]
        if sni:
            names[int(frame)] = sni
        elif method and host and stream not in http_streams:
            http_streams.add(stream)
            names[int(frame)] = _strip_port(host)
        elif qname and "53" in (usport, udport):
            names[int(frame)] = qname
        elif qname and tdport == "53" and response == "0" and stream not in dns_streams:
            dns_streams.add(stream)
            names[int(frame)] = qname
    return {k: v.lower().rstrip(".") for k, v in names.items()}


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1:host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def egressd_names(path: Path) -> tuple[dict[int, str], dict[int, str]]:
    """(frame -> name, frame -> app) as the pipeline attaches them."""
    pipe = Pipeline()
    names: dict[int, str] = {}
    apps: dict[int, str] = {}
    seen = 0
    with CaptureReader(path, batch_packets=64, extra_bytes=pipe.extra_bytes) as reader:
        for b in reader:
            pipe.process(b, reader.extra_base)
            for i in np.flatnonzero(b.name_id[:b.n] >= 0):
                name = pipe.l7.arena.get(int(b.name_id[i]))
                names[seen + int(i) + 1] = name.decode("latin-1")
                apps[seen + int(i) + 1] = APP_NAMES[b.app[i]]
            seen += b.n
    return names, apps


@pytest.mark.parametrize("capture", CLIENTS, ids=lambda p: p.name)
def test_real_clients(capture: Path) -> None:
    expected = tshark_names(capture)
    got, _ = egressd_names(capture)
    assert expected, "tshark found no names: the capture is not what it should be"
    assert got == expected


@pytest.mark.parametrize("rel", SURICATA)
def test_suricata_captures(rel: str, wrapped: dict[str, Path]) -> None:
    path = wrapped[rel]
    assert egressd_names(path)[0] == tshark_names(path)


def test_apps(wrapped: dict[str, Path]) -> None:
    """The protocol a name came from: TLS over TCP, QUIC, HTTP, DNS."""
    _, apps = egressd_names(PCAPS / "clients" / "chromium.pcap")
    assert set(apps.values()) == {"tls"}
    _, apps = egressd_names(wrapped["quic-ietf/input.pcap"])
    assert set(apps.values()) == {"quic"}
    _, apps = egressd_names(PCAPS / "clients" / "curl-http.pcap")
    assert set(apps.values()) == {"http"}
    _, apps = egressd_names(PCAPS / "clients" / "dns.pcap")
    assert set(apps.values()) == {"dns"}


def _flow_tls(path: Path) -> set[tuple[str, int, bytes]]:
    """(name, TLS version offered, ALPN wire list) of every TLS/QUIC flow with a name."""
    pipe = Pipeline()
    seen = set()
    with CaptureReader(path, extra_bytes=pipe.extra_bytes) as reader:
        for b in reader:
            pipe.process(b, reader.extra_base)
            for s in np.unique(b.flow[:b.n][(b.name_id[:b.n] >= 0) & (b.app[:b.n] != 3)]):
                l7 = pipe.l7
                alpn = l7.arena.get(int(l7.alpn[s])) if l7.alpn[s] >= 0 else b""
                seen.add((l7.arena.get(int(l7.name[s])).decode(), int(l7.tls_version[s]), alpn))
    return seen


def test_tls_version_and_alpn_per_flow(wrapped: dict[str, Path]) -> None:
    """What the flow offered, as tshark reads it: highest supported_versions, ALPN."""
    h2 = b"\x02h2\x08http/1.1"
    assert ("chromium.example.test", 0x0304, h2) in _flow_tls(PCAPS / "clients" / "chromium.pcap")
    assert ("pkgs.example.com", 0x0304, h2) in _flow_tls(PCAPS / "clients" / "curl-tls.pcap")
    assert {n for n, _, _ in _flow_tls(wrapped["quic-ietf/input.pcap"])} == {"msquic.net"}
    # it offers 0x0304 and drafts 0x7f1c..0x7f1a (tshark): TLS 1.3 itself ranks highest
    assert {v for _, v, _ in _flow_tls(wrapped["quic-ietf/input.pcap"])} == {0x0304}


def _suricata_expected(rel: str) -> set[str]:
    """Names Suricata's own expected output (test.yaml) gives for a capture."""
    import yaml

    doc = yaml.safe_load((CORPUS / "suricata-verify" / rel.split("/")[0] / "test.yaml").read_text())
    out = set()
    for check in doc.get("checks", []):
        for key, value in (check.get("filter", {}).get("match", {}) or {}).items():
            if key in ("tls.sni", "http.hostname", "dns.rrname", "dns.queries[0].rrname",
                       "dns.query[0].rrname") and isinstance(value, str):
                out.add(value.strip("[]").lower())
    return out


@pytest.mark.parametrize("rel", [r for r in SURICATA if _suricata_expected(r)])
def test_suricata_expected_names(rel: str, wrapped: dict[str, Path]) -> None:
    """Every name Suricata's expected EVE output names is a name egressd read."""
    assert _suricata_expected(rel) <= set(egressd_names(wrapped[rel])[0].values())
