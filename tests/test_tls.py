"""engine.tls.client_hello on real and hostile ClientHellos, and against its slow twin.

Real ClientHellos come from three independent sources: Python's ssl module (OpenSSL,
through a MemoryBIO: no network), scapy's TLS layer, and the TCP client streams of
Suricata's test captures (reassembled with dpkt), whose names, ALPN and versions must
equal what tshark reads from the same capture.  Hostile ones are built with scapy,
lying in one length field at a time.  Hypothesis then mutates valid ClientHellos, cuts
them into records and makes up byte strings, and the kernel must give exactly what
reference_tls gives.

EGRESSD_FUZZ_SCALE scales the example counts (test_boundscheck runs this module again
with fewer examples, every kernel recompiled with bounds checks).
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from collections import defaultdict
from functools import cache
from pathlib import Path

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.tls.extensions import (TLS_Ext_ALPN, TLS_Ext_ServerName, TLS_Ext_SupportedVersion_CH,
                                         TLS_Ext_Unknown, ProtocolName, ServerName)
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS

import reference_tls as ref
from conftest import CORPUS
from egressd.bench.tls import ssl_client_hello
from egressd.engine import tls

SCALE = float(os.environ.get("EGRESSD_FUZZ_SCALE", "1"))
OK, NEED_MORE, NOT_TLS, MALFORMED = tls.OK, tls.NEED_MORE, tls.NOT_TLS, tls.MALFORMED
PAD = b"\x16\x03\x01"   # before p: bytes that would pass for a record header if read


def fuzz(examples: int) -> settings:
    """Deterministic settings (derandomized, no example database): CI sees the same
    examples on every run."""
    return settings(derandomize=True, database=None, deadline=None,
                    max_examples=max(10, int(examples * SCALE)),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run(stream: bytes, records: bool = True, no: int = 0, ao: int = 0, tail: bytes = b"") -> ref.Hello:
    """client_hello on `stream`, its outputs as reference_tls gives them.

    The buffer ends where the stream does (unless `tail` follows), so that a read past
    it fails under NUMBA_BOUNDSCHECK; output arrays are exactly as large as the API
    requires, and what the kernel must not touch is checked untouched."""
    buf = np.frombuffer(PAD + stream + tail, np.uint8).copy()
    scratch = np.zeros(tls.MAX_CLIENT_HELLO, np.uint8)
    name = np.full(no + tls.SNI_MAX, 0xEE, np.uint8)
    alpn = np.full(ao + tls.ALPN_MAX, 0xEE, np.uint8)
    st_, need, sni_len, alpn_len, version, flags = tls.client_hello(
        buf, len(PAD), len(stream), records, scratch, name, no, alpn, ao)
    assert (name[:no] == 0xEE).all() and (alpn[:ao] == 0xEE).all()
    assert 0 <= sni_len <= tls.SNI_MAX and 0 <= alpn_len <= tls.ALPN_MAX
    return ref.Hello(int(st_), int(need), bytes(name[no:no + sni_len]), bytes(alpn[ao:ao + alpn_len]),
                     int(version), int(flags))


def alpn_wire(protocols: list[bytes]) -> bytes:
    return b"".join(bytes([len(p)]) + p for p in protocols)


def alpn_names(wire: bytes) -> list[bytes]:
    names = []
    while wire:
        names.append(wire[1:1 + wire[0]])
        wire = wire[1 + wire[0]:]
    return names


def message_of(stream: bytes) -> bytes:
    """The handshake message of a one-record ClientHello stream."""
    return stream[5:5 + int.from_bytes(stream[3:5], "big")]


def in_records(message: bytes, cuts: list[int], version: bytes = b"\x03\x01") -> bytes:
    """A handshake message in TLS records, cut at the given offsets."""
    edges = [0, *cuts, len(message)]
    return b"".join(b"\x16" + version + (b - a).to_bytes(2, "big") + message[a:b]
                    for a, b in zip(edges[:-1], edges[1:]))


# --- ClientHellos built with scapy, optionally lying in one length field -----------------

FIELD_WIDTH = {"record": 2, "handshake": 3, "session_id": 1, "cipher_suites": 2, "compression": 1,
               "extensions": 2, "sni_ext": 2, "sni_list": 2, "sni_entry": 2, "alpn_ext": 2,
               "alpn_list": 2, "alpn_entry": 1, "versions_ext": 2, "versions_list": 1}


def scapy_hello(names=((0, b"www.example.com"),), alpn=(b"h2", b"http/1.1"), versions=(0x0304, 0x0303),
                extra=(), lie: tuple[str, int | str] | None = None) -> bytes:
    """A ClientHello record built by scapy.  names: (name_type, name) entries or None for
    no server_name extension; extra: more extensions (scapy objects) appended.
    lie: (field of FIELD_WIDTH, delta or "max"): that length field is written as the
    true length plus delta (or its largest value), everything else is left true."""
    def length(field: str, honest: int) -> int | None:
        if not lie or lie[0] != field:
            return None  # scapy computes it
        return (1 << 8 * FIELD_WIDTH[field]) - 1 if lie[1] == "max" else honest + lie[1]

    exts = []
    if names is not None:
        entries = [ServerName(nametype=t, servername=n, namelen=length("sni_entry", len(n)) if k == 0 else None)
                   for k, (t, n) in enumerate(names)]
        size = sum(3 + len(n) for _, n in names)
        exts.append(TLS_Ext_ServerName(servernames=entries, servernameslen=length("sni_list", size),
                                       len=length("sni_ext", size + 2)))
    if alpn:
        protos = [ProtocolName(protocol=p, len=length("alpn_entry", len(p)) if k == 0 else None)
                  for k, p in enumerate(alpn)]
        size = len(alpn_wire(list(alpn)))
        exts.append(TLS_Ext_ALPN(protocols=protos, protocolslen=length("alpn_list", size),
                                 len=length("alpn_ext", size + 2)))
    if versions:
        exts.append(TLS_Ext_SupportedVersion_CH(versions=list(versions),
                                                versionslen=length("versions_list", 2 * len(versions)),
                                                len=length("versions_ext", 2 * len(versions) + 1)))
    exts += list(extra)
    sid, ciphers = bytes(range(40, 48)), [0x1301, 0x1302, 0xC02F]

    def hello(msglen: int | None) -> TLSClientHello:
        return TLSClientHello(version=0x0303, gmt_unix_time=0, random_bytes=bytes(range(28)), sid=sid,
                              sidlen=length("session_id", len(sid)), ciphers=ciphers,
                              cipherslen=length("cipher_suites", 2 * len(ciphers)), comp=[0],
                              complen=length("compression", 1), ext=exts,
                              extlen=length("extensions", sum(len(bytes(e)) for e in exts)),
                              msglen=msglen)

    size = len(bytes(hello(None))) - 4
    return bytes(TLS(version=0x0301, len=length("record", 4 + size), msg=[hello(length("handshake", size))]))


def unknown_ext(kind: int, value: bytes = b"") -> TLS_Ext_Unknown:
    return TLS_Ext_Unknown(type=kind, val=value)


# --- seeds: valid ClientHellos of every origin --------------------------------------------

SSL_CASES = [  # (server_hostname, ALPN, TLS 1.2 at most)
    ("www.example.com", ["h2", "http/1.1"], False),
    ("WWW.Example.COM.", None, False),
    ("xn--bcher-kva.example", ["http/1.1"], True),
    ("a." * 100 + "example.com", ["h2"], False),
    ("short", None, True),
    ("192.0.2.1", ["h2", "http/1.1"], False),       # an IP address: OpenSSL sends no SNI
    (None, None, True),
]


@cache
def ssl_hellos() -> tuple[bytes, ...]:
    return tuple(ssl_client_hello(h, a, t12) for h, a, t12 in SSL_CASES)


@cache
def scapy_hellos() -> tuple[bytes, ...]:
    grease = unknown_ext(0x3A3A)
    return (scapy_hello(),
            scapy_hello(names=((0, b"a.example"), (0, b"b.example")), extra=[grease]),
            scapy_hello(names=((1, b"other"), (0, b"")), alpn=(), versions=(0x7A7A, 0x0304)),
            scapy_hello(names=None, extra=[unknown_ext(0xFE0D, b"\x00" * 12), unknown_ext(21, bytes(30))]),
            scapy_hello(alpn=[b"x" * 30, b"y" * 30, b"z"]))


def seeds() -> list[bytes]:
    return [*ssl_hellos(), *scapy_hellos(), *(s for s in corpus_hellos().values())]


# --- the shared corpus ---------------------------------------------------------------------

CAPTURES = {  # folder/file -> the names the README lists
    "tls_tls-client-hello-frag-01/dump_mtu300.pcap": {"www.google.com"},
    "bug-2646-01/input.pcap": {"raw.githubusercontent.com"},
    "bug-5758/input.pcap": {"ftp.nluug.nl"},
    "community-id-ipv4/input.pcap": {"ipv4.google.com"},
    "community-id-ipv6/input.pcap": {"dns.google", "ipv6.google.com"},
    "tls_tls13-draft28/tls13_draft28.pcap": {"localhost"},
    "tls_tls-random/input.pcap": {""},
}


def client_segments(path: Path) -> dict[tuple[str, int], list[bytes]]:
    """Each TCP client's segments (of the side that sent the SYN) in sequence order from
    its first byte, retransmissions dropped, cut at the first hole; keyed by (address,
    port)."""
    isn: dict[tuple[str, int], int] = {}
    segments: dict[tuple[str, int], dict[int, bytes]] = defaultdict(dict)
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        link = reader.datalink()
        for _ts, frame in reader:
            if link == dpkt.pcap.DLT_EN10MB:
                ip = dpkt.ethernet.Ethernet(frame).data
            else:  # raw IP
                ip = dpkt.ip.IP(frame) if frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)
            tcp = ip.data
            if not isinstance(tcp, dpkt.tcp.TCP):
                continue
            family = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
            key = (socket.inet_ntop(family, ip.src), tcp.sport)
            if tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK:
                isn[key] = tcp.seq + 1
            elif tcp.data:
                segments[key].setdefault(tcp.seq, bytes(tcp.data))
    out = {}
    for key, start in isn.items():
        pieces, size = [], 0
        for seq, payload in sorted(segments[key].items(), key=lambda kv: (kv[0] - start) % 2**32):
            rel = (seq - start) % 2**32
            if rel > size:
                break  # a hole: the rest is not the stream's start
            if rel + len(payload) > size:
                pieces.append(payload[size - rel:])
                size += len(pieces[-1])
        out[key] = pieces
    return out


def client_streams(path: Path) -> dict[tuple[str, int], bytes]:
    return {key: b"".join(pieces) for key, pieces in client_segments(path).items()}


def tshark_hellos(tshark: str, path: Path) -> dict[tuple[str, int], list[str]]:
    """tshark's reading of each client's first ClientHello, keyed like client_streams."""
    fields = ["ip.src", "ipv6.src", "tcp.srcport", "tls.handshake.extensions_server_name",
              "tls.handshake.extensions_alpn_str", "tls.handshake.extensions.supported_version",
              "tls.handshake.version", "tls.handshake.extension.type"]
    out = subprocess.run([tshark, "-r", str(path), "-Y", "tls.handshake.type == 1", "-T", "fields",
                          "-E", "separator=|", *(a for f in fields for a in ("-e", f))],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    rows: dict[tuple[str, int], list[str]] = {}
    for line in out.splitlines():
        v4, v6, port, *rest = line.split("|")
        rows.setdefault((v4 or v6, int(port)), rest)
    return rows


@cache
def corpus_hellos() -> dict[str, bytes]:
    """The first record of the first client stream of each capture that starts with a
    TLS record (a whole ClientHello in each of these captures)."""
    out = {}
    for rel in CAPTURES:
        for stream in client_streams(CORPUS / "suricata-verify" / rel).values():
            if stream[:1] == b"\x16":
                out[rel] = stream[:5 + int.from_bytes(stream[3:5], "big")]
                break
    return out


# --- real ClientHellos ------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(len(SSL_CASES)))
def test_python_ssl_client_hellos(case: int) -> None:
    host, alpn, tls12 = SSL_CASES[case]
    stream = ssl_hellos()[case]
    got = run(stream)
    assert got.status == OK
    assert got == ref.client_hello(stream)
    sends_sni = host is not None and not host.replace(".", "").isdigit()
    # OpenSSL sends the name as given (a trailing dot too): normalizing is not ours
    assert got.sni == (host.encode() if sends_sni else b"")
    assert bool(got.flags & tls.F_NO_SNI) == (not sends_sni)
    assert got.alpn == alpn_wire([a.encode() for a in alpn or []])
    assert got.version == (0x0303 if tls12 else 0x0304)
    assert got.flags & ~tls.F_NO_SNI == 0
    # scapy's dissector reads the same
    exts = {e.type: e for e in TLS(stream).msg[0].ext or []}
    if sends_sni:
        assert [bytes(n.servername) for n in exts[0].servernames] == [got.sni]
    else:
        assert 0 not in exts
    if alpn:
        assert [bytes(p.protocol) for p in exts[16].protocols] == alpn_names(got.alpn)
    else:
        assert 16 not in exts


@pytest.mark.parametrize("capture", sorted(CAPTURES))
def test_corpus_client_hellos_match_tshark(capture: str, tshark: str) -> None:
    path = CORPUS / "suricata-verify" / capture
    streams = client_streams(path)
    seen = tshark_hellos(tshark, path)
    assert seen, "tshark found no ClientHello"
    names = set()
    for key, (sni, alpn, versions, legacy, types) in seen.items():
        got = run(streams[key])
        assert got.status == OK, (key, got)
        assert got == ref.client_hello(streams[key])
        assert got.sni.decode() == sni
        names.add(sni)
        assert bool(got.flags & tls.F_NO_SNI) == (sni == "")
        assert ",".join(p.decode() for p in alpn_names(got.alpn)) == alpn
        offered = [int(v, 16) for v in versions.split(",") if v and not ref.is_grease(int(v, 16))]
        assert got.version == max(offered, default=int(legacy, 16))
        assert bool(got.flags & tls.F_ECH) == (str(0xFE0D) in types.split(","))
    assert names == CAPTURES[capture]


def test_client_hello_split_over_tcp_segments() -> None:
    """Suricata's frag-01 capture: a 517-byte ClientHello in TCP segments of an MTU of
    300.  The stream as it grows, segment by segment, waits for all 517 bytes."""
    path = CORPUS / "suricata-verify" / "tls_tls-client-hello-frag-01" / "dump_mtu300.pcap"
    (pieces,) = [p for p in client_segments(path).values() if p and p[0][:1] == b"\x16"]
    assert len(pieces) > 1 and max(map(len, pieces)) < 300
    stream = b""
    for piece in pieces:
        if len(stream) >= 517:
            break
        assert run(stream) == ref.Hello(NEED_MORE, 517 if len(stream) >= 5 else 0)
        stream += piece
    assert len(stream) == 517 and run(stream).sni == b"www.google.com"


# --- prefixes and records ---------------------------------------------------------------------

@pytest.mark.parametrize("which", ["ssl13", "ssl12", "scapy", "frag-01", "draft28"])
def test_every_prefix_waits_then_parses(which: str) -> None:
    stream = {"ssl13": ssl_hellos()[0], "ssl12": ssl_hellos()[2], "scapy": scapy_hellos()[1],
              "frag-01": corpus_hellos()["tls_tls-client-hello-frag-01/dump_mtu300.pcap"],
              "draft28": corpus_hellos()["tls_tls13-draft28/tls13_draft28.pcap"]}[which]
    whole = run(stream)
    assert whole.status == OK and whole.need == len(stream)  # OK: the bytes the ClientHello took
    for cut in range(len(stream)):
        assert run(stream[:cut]) == ref.Hello(NEED_MORE, len(stream) if cut >= 5 else 0), cut
    # the same message as a QUIC CRYPTO stream: no record header
    message = message_of(stream)
    assert run(message, records=False) == whole._replace(need=len(message))
    for cut in range(len(message)):
        assert run(message[:cut], records=False) == ref.Hello(NEED_MORE, len(message) if cut >= 4 else 0)
    # what follows the ClientHello is not its business
    assert run(stream + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x10") == whole
    assert run(message + b"\x02\x00", records=False) == whole._replace(need=len(message))


@st.composite
def cut_into_records(draw) -> tuple[bytes, bytes]:
    """A seed and the same handshake message cut into 2 to 40 records at random."""
    stream = draw(st.sampled_from(seeds()))
    message = message_of(stream)
    cuts = draw(st.lists(st.integers(1, len(message) - 1), min_size=1, max_size=39, unique=True))
    return stream, in_records(message, sorted(cuts), draw(st.sampled_from([b"\x03\x01", b"\x03\x03"])))


@fuzz(150)
@given(cut_into_records())
def test_records_of_random_sizes_give_the_same_hello(pair: tuple[bytes, bytes]) -> None:
    single, split = pair
    expect = run(single)
    got = run(split)
    assert got == expect._replace(flags=expect.flags | tls.F_MULTI_RECORD, need=len(split))
    assert got == ref.client_hello(split)
    starts, pos = [], 0
    while pos < len(split):
        starts.append(pos)
        pos += 5 + int.from_bytes(split[pos + 3:pos + 5], "big")
    needs = []
    for cut in range(len(split)):
        part = run(split[:cut])
        assert part.status == NEED_MORE and part == ref.client_hello(split[:cut])
        needs.append(part.need)
        assert part.need <= len(split)
        if cut >= starts[-1] + 5:
            assert part.need == len(split)
    assert needs == sorted(needs)


# --- the first bytes decide ------------------------------------------------------------------

@pytest.mark.parametrize("stream, status", [
    (b"", NEED_MORE),
    (b"\x16", NEED_MORE),
    (b"G", NOT_TLS),
    (b"GET / HTTP/1.1\r\n", NOT_TLS),
    (b"\x16\x03", NEED_MORE),
    (b"\x16\x02", NOT_TLS),                       # not 3.x
    (b"\x16\x03\x01\x02", NEED_MORE),
    (b"\x16\x03\x01\x02\x00", NEED_MORE),
    (b"\x16\x03\x01\x02\x00\x02", NOT_TLS),       # a ServerHello
    (b"\x16\x03\x01\x02\x00\x01", NEED_MORE),
    (b"\x17\x03\x03\x00\x20", NOT_TLS),           # application data
    (b"\x80\x2e\x01\x03\x01", NOT_TLS),           # an SSLv2-style hello
    (b"\x16\x03\x01\x00\x00", MALFORMED),         # an empty handshake record
    (b"\x16\x03\x01\x40\x01", MALFORMED),         # a record over 2^14 bytes
    (b"\x16\x03\x01\xff\xff\x01", MALFORMED),
    (b"\x16\x03\x01\x02\x00\x01\xff\xff\xff", MALFORMED),   # a 16 MB ClientHello
    (b"\x16\x03\x01\x02\x00\x01\x00\x3f\xfd", MALFORMED),   # one byte over MAX_CLIENT_HELLO
])
def test_first_bytes_decide(stream: bytes, status: int) -> None:
    assert run(stream).status == status
    assert ref.client_hello(stream).status == status


def test_bare_handshake_first_bytes() -> None:
    assert run(b"", records=False) == ref.Hello(NEED_MORE)
    assert run(b"\x01\x00", records=False) == ref.Hello(NEED_MORE)
    assert run(b"\x16\x03\x01", records=False).status == NOT_TLS   # a record is not a bare message
    assert run(b"\x02\x00\x00\x30", records=False).status == NOT_TLS
    assert run(b"\x01\x00\x3f\xfc", records=False) == ref.Hello(NEED_MORE, tls.MAX_CLIENT_HELLO)
    assert run(b"\x01\x00\x3f\xfd", records=False).status == MALFORMED


def test_records_around_the_client_hello() -> None:
    message = message_of(scapy_hello())
    whole = run(in_records(message, [])).status
    assert whole == OK
    # a change_cipher_spec, an alert, application data between fragments: malformed
    for kind in (b"\x14", b"\x15", b"\x17"):
        stream = in_records(message, [50])
        first = 5 + 50
        odd = stream[:first] + kind + b"\x03\x03\x00\x01\x01" + stream[first:]
        assert run(odd).status == MALFORMED and ref.client_hello(odd).status == MALFORMED
    # a second record that is not 3.x, one that is empty
    stream = in_records(message, [50])
    assert run(stream[:56] + b"\x02" + stream[57:]).status == MALFORMED
    assert run(stream[:55] + b"\x16\x03\x03\x00\x00" + stream[55:]).status == MALFORMED
    # a record running past the ClientHello (something else coalesced into it)
    longer = stream[:55] + b"\x16\x03\x03" + (len(message) - 50 + 1).to_bytes(2, "big") \
        + stream[60:] + b"\x0e"
    assert run(longer).status == MALFORMED
    # the handshake header itself cut into 1-byte records
    tiny = in_records(message, [1, 2, 3])
    got = run(tiny)
    assert got.status == OK and got.flags & tls.F_MULTI_RECORD and got.sni == b"www.example.com"
    # after the first record: another record and 3 header bytes at least
    assert run(tiny[:8]) == ref.Hello(NEED_MORE, 6 + 5 + 3)
    assert run(tiny[:18]) == ref.Hello(NEED_MORE, 18 + 5 + 1)
    assert run(tiny[:23]) == ref.Hello(NEED_MORE, len(tiny))   # the last record header is in


# --- hostile lengths ----------------------------------------------------------------------------

INNER_FIELDS = [f for f in FIELD_WIDTH if f not in ("record", "handshake")]


@pytest.mark.parametrize("field", INNER_FIELDS)
@pytest.mark.parametrize("delta", [-1, 1, 7, "max"])
def test_lying_inner_lengths_are_malformed(field: str, delta: int | str) -> None:
    stream = scapy_hello(lie=(field, delta))
    assert len(stream) == len(scapy_hello())  # only the field changed
    assert run(stream).status == MALFORMED
    assert ref.client_hello(stream).status == MALFORMED


def test_lying_outer_lengths() -> None:
    honest = scapy_hello()
    size = len(honest)
    # a record longer than its handshake message (seen before its end)
    assert run(scapy_hello(lie=("record", 1))).status == MALFORMED
    # a handshake longer than its record: the rest is in the next record
    assert run(scapy_hello(lie=("handshake", 1))) == ref.Hello(NEED_MORE, size + 5 + 1)
    # a record longer than its handshake message
    assert run(scapy_hello(lie=("handshake", -1))).status == MALFORMED
    # a record shorter than its handshake message, then bytes that are no record header
    assert run(scapy_hello(lie=("record", -1))).status == MALFORMED
    for field in ("record", "handshake"):
        assert run(scapy_hello(lie=(field, "max"))).status == MALFORMED


def test_huge_declared_lengths_are_refused_early() -> None:
    """A 16 MB handshake or a 64 KB record is refused from its header alone."""
    assert run(b"\x16\x03\x01\x40\x00\x01\xff\xff\xff").status == MALFORMED
    assert run(b"\x16\x03\x01\xff\xff").status == MALFORMED
    assert run(b"\x01\xff\xff\xff", records=False).status == MALFORMED


def many_extensions(count: int, last: bytes = b"") -> bytes:
    """A ClientHello message with `count` empty extensions of distinct types, then `last`
    (the extensions block's length field saturates at 0xFFFF)."""
    exts = b"".join((k % 65536).to_bytes(2, "big") + b"\x00\x00" for k in range(0x1000, 0x1000 + count))
    exts += last
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + min(len(exts), 0xFFFF).to_bytes(2, "big") + exts)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def test_64k_extensions() -> None:
    sni = b"\x00\x00\x00\x0e\x00\x0c\x00\x00\x09a.example"
    # 64 K extensions cannot fit: refused on the handshake header, before any walk
    huge = many_extensions(65536)
    assert len(huge) > tls.MAX_CLIENT_HELLO
    assert run(huge, records=False).status == MALFORMED
    assert run(huge[:4], records=False).status == MALFORMED
    # as many as fit (4 000 and more), then a server name: walked in bounded time
    most = many_extensions((tls.MAX_CLIENT_HELLO - 60 - len(sni)) // 4, sni)
    assert len(most) <= tls.MAX_CLIENT_HELLO
    stream = in_records(most, [len(most) // 2])
    got = run(stream)
    assert got == ref.Hello(OK, len(stream), b"a.example", b"", 0x0303, tls.F_MULTI_RECORD)
    assert run(most, records=False) == got._replace(flags=0, need=len(most))
    buf = np.frombuffer(stream, np.uint8).copy()
    scratch = np.zeros(tls.MAX_CLIENT_HELLO, np.uint8)
    out = np.zeros(tls.SNI_MAX, np.uint8)
    start = time.perf_counter()
    for _ in range(200):
        tls.client_hello(buf, 0, len(stream), True, scratch, out, 0, out, 0)
    assert time.perf_counter() - start < 2.0  # ~10 us each here


# --- names, versions, extensions --------------------------------------------------------------

@pytest.mark.parametrize("names, sni, flags", [
    (((0, b"a.example"), (0, b"b.example")), b"a.example", tls.F_SNI_MULTIPLE),
    (((0, b""),), b"", tls.F_SNI_EMPTY),
    (((0, b""), (0, b"b.example")), b"", tls.F_SNI_EMPTY | tls.F_SNI_MULTIPLE),
    (((7, b"opaque"), (0, b"b.example")), b"b.example", tls.F_SNI_NOT_HOSTNAME | tls.F_SNI_MULTIPLE),
    (((7, b"opaque"),), b"", tls.F_SNI_NOT_HOSTNAME),
    (((0, b"x" * 255),), b"x" * 255, 0),
    ((), None, MALFORMED),                          # an empty list
    (((0, b"x" * 256),), None, MALFORMED),          # longer than any DNS name
    (((0, b"a.example"), (0, b"y" * 300)), None, MALFORMED),
    (None, b"", tls.F_NO_SNI),
])
def test_server_name_lists(names, sni: bytes | None, flags: int) -> None:
    stream = scapy_hello(names=names)
    got = run(stream)
    assert got == ref.client_hello(stream)
    if sni is None:
        assert got.status == MALFORMED
    else:
        assert (got.status, got.sni, got.flags) == (OK, sni, flags)


@pytest.mark.parametrize("versions, expect", [
    ((0x0304, 0x0303), 0x0304),
    ((0x0303, 0x0304), 0x0304),                 # highest, not first
    ((0x1A1A, 0x0304, 0x0303), 0x0304),         # GREASE (RFC 8701) ignored
    ((0xFAFA, 0x0303), 0x0303),                 # even when it is numerically highest
    ((0x1A0A, 0x0304), 0x1A0A),                 # not GREASE: both bytes must be equal
    ((0x7F1C, 0x0303), 0x7F1C),                 # a TLS 1.3 draft, as offered
    ((0x2A2A,), 0x0303),                        # only GREASE: legacy_version
    ((), 0x0303),                               # no extension: legacy_version
])
def test_versions(versions: tuple[int, ...], expect: int) -> None:
    stream = scapy_hello(versions=versions)
    got = run(stream)
    assert got.status == OK and got.version == expect
    assert got == ref.client_hello(stream)


def test_odd_supported_versions_are_malformed() -> None:
    for body in (b"\x01\x03", b"\x00", b"\x03\x03\x04\x03", b""):
        stream = scapy_hello(versions=(), extra=[unknown_ext(43, body)])
        assert run(stream).status == MALFORMED == ref.client_hello(stream).status


@pytest.mark.parametrize("kind", [0, 16, 43, 0xFE0D])
def test_duplicate_extensions_read_here_are_malformed(kind: int) -> None:
    body = {0: b"\x00\x0c\x00\x00\x09b.example", 16: b"\x00\x03\x02h2", 43: b"\x02\x03\x04",
            0xFE0D: b"\x00"}[kind]
    stream = scapy_hello(extra=[unknown_ext(kind, body)] * (2 if kind == 0xFE0D else 1))
    assert run(stream).status == MALFORMED == ref.client_hello(stream).status
    # duplicates of extensions nobody reads here are left to the server
    assert run(scapy_hello(extra=[unknown_ext(0x1234)] * 2)).status == OK


def test_ech_grease_and_alpn() -> None:
    got = run(scapy_hello(extra=[unknown_ext(0xFE0D, bytes(40)), unknown_ext(0x0A0A), unknown_ext(0xFAFA, b"x")]))
    assert got.status == OK and got.flags == tls.F_ECH and got.sni == b"www.example.com"
    # ALPN: whole entries up to ALPN_MAX, in order
    protos = [b"a" * 20, b"b" * 20, b"c" * 21]
    got = run(scapy_hello(alpn=protos))
    assert got.alpn == alpn_wire(protos) and len(got.alpn) == 64 and got.flags == 0
    got = run(scapy_hello(alpn=[*protos, b"d"]))
    assert got.alpn == alpn_wire(protos) and got.flags == tls.F_ALPN_TRUNCATED
    got = run(scapy_hello(alpn=[b"a" * 20, b"b" * 50, b"c"]))   # "c" would fit, but after "b"
    assert got.alpn == alpn_wire([b"a" * 20]) and got.flags == tls.F_ALPN_TRUNCATED
    got = run(scapy_hello(alpn=[b"\x1a\x1a", b"h2"]))   # a GREASE protocol name is a name
    assert got.alpn == b"\x02\x1a\x1a\x02h2"
    for body in (b"\x00\x00", b"\x00\x01\x00", b"\x00\x03\x02h2\x00", b"\x00\x04\x00\x02h2"):
        stream = scapy_hello(alpn=(), extra=[unknown_ext(16, body)])
        assert run(stream).status == MALFORMED == ref.client_hello(stream).status


def test_outputs_land_at_their_offsets() -> None:
    stream = ssl_hellos()[0]
    got = run(stream, no=100, ao=30)   # run() checks the bytes before the offsets
    assert got == run(stream)


def test_hello_without_extensions_or_with_odd_body() -> None:
    body = b"\x03\x01" + bytes(32) + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    stream = in_records(message, [])
    assert run(stream) == ref.Hello(OK, len(stream), b"", b"", 0x0301, tls.F_NO_SNI)
    for bad in (body + b"\x00",                        # one byte where an extensions block starts
                body + b"\x00\x00\x00",                  # bytes after an empty block
                body + b"\x00\x04\x00\x00\x00\x00\x00",     # a block shorter than what follows
                body + b"\x00\x07\x00\x15\x00\x00\x00\x15\x00",  # 3 bytes left: no extension header
                body[:34] + b"\x21" + bytes(33) + body[35:],    # a 33-byte session id
                body[:35] + b"\x00\x00" + body[39:],           # no cipher suites
                body[:35] + b"\x00\x03\x00\x2f\x00" + body[39:],  # an odd cipher_suites length
                body[:-2] + b"\x00"):                          # no compression method
        msg = b"\x01" + len(bad).to_bytes(3, "big") + bad
        assert run(msg, records=False).status == MALFORMED == ref.client_hello(msg, False).status, bad


# --- fuzzing against the reference ------------------------------------------------------------

@st.composite
def mutated(draw) -> bytes:
    """A valid ClientHello stream, maybe cut into records, then a few bytes changed:
    flipped, set, a 16-bit field nudged (lengths), inserted, deleted, or the end cut."""
    stream = draw(st.sampled_from(seeds()))
    if draw(st.booleans()):
        message = message_of(stream)
        cuts = draw(st.lists(st.integers(1, len(message) - 1), max_size=4, unique=True))
        stream = in_records(message, sorted(cuts))
    data = bytearray(stream)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "nudge", "insert", "delete", "cut"]))
        at = draw(st.integers(0, len(data) - 1)) if data else 0
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0, 1, 2, 3, 0x16, 0x7F, 0xFF]))
        elif op == "nudge" and at + 1 < len(data):
            value = (int.from_bytes(data[at:at + 2], "big") + draw(st.integers(-4, 4))) % 65536
            data[at:at + 2] = value.to_bytes(2, "big")
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[at:]
    return bytes(data)


def check_against_reference(stream: bytes) -> None:
    for records in (True, False):
        data = stream if records else stream[5:]
        expect = ref.client_hello(data, records)
        assert run(data, records) == expect
        # bytes after the stream are never read
        assert run(data, records, no=3, ao=1, tail=b"\x16\x03\x01\xff" * 4) == expect


@fuzz(1500)
@given(mutated())
def test_mutated_hellos_match_reference(stream: bytes) -> None:
    check_against_reference(stream)


@fuzz(500)
@given(st.one_of(st.binary(max_size=64),
                 st.binary(max_size=300).map(lambda b: b"\x16\x03\x01" + b),
                 st.binary(max_size=300).map(lambda b: b"\x16\x03\x03" + len(b).to_bytes(2, "big") + b"\x01" + b)))
def test_random_bytes_match_reference(stream: bytes) -> None:
    check_against_reference(stream)
