"""engine.http.request: method and host of the first HTTP/1.x request of a stream.

Checked on requests real clients sent (curl and Python's http.client / urllib against
a recording server on 127.0.0.1, and the shared corpus captures), with tshark as the
oracle for the host; on hand-written edge cases with the expected answer spelled out;
on every prefix of a request (NEED_MORE until the header block ends, then OK); and by
hypothesis against the slow twin (reference_http) on generated and broken requests.
The kernel reads a buffer that ends where the stream ends, so that under
NUMBA_BOUNDSCHECK=1 a read past the stream raises; its host output gets exactly
HOST_MAX bytes.

EGRESSD_FUZZ_SCALE scales the example counts (test_boundscheck runs this module again).
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import NamedTuple

import dpkt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from egressd.engine.http import (F_ABSOLUTE_URI, F_CONNECT, F_HOST_MISMATCH, F_MULTIPLE_HOST,
                                 F_NO_HOST, HOST_MAX, M_CONNECT, M_DELETE, M_GET, M_HEAD,
                                 M_OPTIONS, M_OTHER, M_PATCH, M_POST, M_PUT, MALFORMED,
                                 MAX_HEADER_BYTES, NEED_MORE, NOT_HTTP, OK, request)
from helpers_pcap import first, tshark_fields, tshark_pdml
from reference_http import METHODS, Request, reference_request
from test_decap_differential import fuzz

LEAD = 5      # the stream starts this far into the buffer
HOST_AT = 3   # and the host is written this far into its output


def kernel(data: bytes) -> Request:
    """engine.http.request on `data`, in a buffer that ends where `data` ends."""
    buf = np.frombuffer(b"\xee" * LEAD + data, np.uint8).copy()
    host = np.full(HOST_AT + HOST_MAX, 0xEE, np.uint8)
    st, need, hlen, method, flags = request(buf, LEAD, len(data), host, HOST_AT)
    assert 0 <= hlen <= HOST_MAX
    return Request(st, need, host[HOST_AT:HOST_AT + hlen].tobytes(), method, flags)


def check(data: bytes) -> Request:
    """Kernel and twin agree on `data`; returns the answer."""
    got = kernel(data)
    assert got == reference_request(data), data[:300]
    return got


# --- hand-written cases ---------------------------------------------------------------

G = b"GET / HTTP/1.1\r\n"
CASES = [
    # (what, stream, status, host, method, flags)
    ("two bytes of a method", b"GE", NEED_MORE, b"", 0, 0),
    ("TLS record", b"\x16\x03", NOT_HTTP, b"", 0, 0),
    ("empty stream", b"", NEED_MORE, b"", 0, 0),
    ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n", NOT_HTTP, b"", 0, 0),
    ("lower-case method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", NOT_HTTP, b"", 0, 0),
    ("leading space", b" GET / HTTP/1.1\r\n", NOT_HTTP, b"", 0, 0),
    ("method of 21 letters", b"A" * 21, NOT_HTTP, b"", 0, 0),
    ("method of 20 letters", b"A" * 20 + b" / HTTP/1.1\r\nHost: a\r\n\r\n", OK, b"a", M_OTHER, 0),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", NOT_HTTP, b"", 0, 0),
    ("HTTP/2 preface, cut", b"PRI * ", NOT_HTTP, b"", 0, 0),
    ("plain", G + b"Host: example.com\r\n\r\n", OK, b"example.com", M_GET, 0),
    ("port stripped", G + b"Host: example.com:8080\r\n\r\n", OK, b"example.com", M_GET, 0),
    ("IPv6 literal", G + b"Host: [::1]:8000\r\n\r\n", OK, b"::1", M_GET, 0),
    ("IPv6 literal, no port", G + b"Host: [2001:db8::7]\r\n\r\n", OK, b"2001:db8::7", M_GET, 0),
    ("empty port", G + b"Host: a.example:\r\n\r\n", OK, b"a.example", M_GET, 0),
    ("case kept", G + b"Host: WWW.Example.COM\r\n\r\n", OK, b"WWW.Example.COM", M_GET, 0),
    ("header name case", G + b"hOsT: a.example\r\n\r\n", OK, b"a.example", M_GET, 0),
    ("whitespace around", G + b"Host: \t a.example \t\r\n\r\n", OK, b"a.example", M_GET, 0),
    ("no space", G + b"Host:a.example\r\n\r\n", OK, b"a.example", M_GET, 0),
    ("bare LF", b"GET / HTTP/1.0\nHost: a.example\n\n", OK, b"a.example", M_GET, 0),
    ("mixed line ends", G + b"Host: a.example\n\r\n", OK, b"a.example", M_GET, 0),
    ("raw UTF-8 name", G + "Host: bücher.example\r\n\r\n".encode(), OK, "bücher.example".encode(),
     M_GET, 0),
    ("other headers first", G + b"User-Agent: x\r\nAccept: */*\r\nHost: b.example\r\n\r\n", OK,
     b"b.example", M_GET, 0),
    ("folded other header", G + b"X-Long: a\r\n  b\r\n\tc\r\nHost: a.example\r\n\r\n", OK,
     b"a.example", M_GET, 0),
    ("Host-ish names", G + b"Hostname: x\r\nX-Host: y\r\nHost: a\r\n\r\n", OK, b"a", M_GET, 0),
    ("no Host", G + b"Accept: */*\r\n\r\n", OK, b"", M_GET, F_NO_HOST),
    ("empty Host", G + b"Host:\r\n\r\n", OK, b"", M_GET, 0),
    ("two Hosts", G + b"Host: a.example\r\nHost: b.example\r\n\r\n", OK, b"a.example", M_GET,
     F_MULTIPLE_HOST),
    ("absolute URI", b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n", OK,
     b"a.example", M_GET, F_ABSOLUTE_URI),
    ("absolute URI, Host differs in case", b"GET http://A.example:80/ HTTP/1.1\r\nHost: a.EXAMPLE\r\n\r\n",
     OK, b"A.example", M_GET, F_ABSOLUTE_URI),
    ("absolute URI wins", b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n", OK,
     b"a.example", M_GET, F_ABSOLUTE_URI | F_HOST_MISMATCH),
    ("absolute URI, no Host", b"POST https://a.example?q HTTP/1.1\r\n\r\n", OK, b"a.example",
     M_POST, F_ABSOLUTE_URI),
    ("absolute URI, userinfo", b"GET http://u:p@evil@a.example:81/ HTTP/1.1\r\n\r\n", OK,
     b"a.example", M_GET, F_ABSOLUTE_URI),
    ("absolute URI, IPv6", b"GET http://[2001:db8::1]:8080/ HTTP/1.1\r\n\r\n", OK, b"2001:db8::1",
     M_GET, F_ABSOLUTE_URI),
    ("absolute URI, empty host", b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", MALFORMED, b"", 0, 0),
    ("CONNECT", b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", OK, b"a.example",
     M_CONNECT, F_CONNECT),
    ("CONNECT, Host differs", b"CONNECT a.example:443 HTTP/1.1\r\nHost: b.example\r\n\r\n", OK,
     b"a.example", M_CONNECT, F_CONNECT | F_HOST_MISMATCH),
    ("CONNECT IPv6", b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n", OK, b"::1", M_CONNECT, F_CONNECT),
    ("CONNECT to a path (bug-7851)", b"CONNECT / HTTP/1.1\r\nMp-Country: US\r\n\r\n", OK, b"",
     M_CONNECT, F_CONNECT | F_NO_HOST),
    ("CONNECT to a path, Host", b"CONNECT / HTTP/1.1\r\nHost: a.example\r\n\r\n", OK, b"a.example",
     M_CONNECT, F_CONNECT),
    ("CONNECT, bad port", b"CONNECT a.example:https HTTP/1.1\r\n\r\n", MALFORMED, b"", 0, 0),
    ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", OK, b"a", M_OPTIONS, 0),
    ("methods HEAD", b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", OK, b"a", M_HEAD, 0),
    ("methods PUT", b"PUT / HTTP/1.1\r\nHost: a\r\n\r\n", OK, b"a", M_PUT, 0),
    ("methods DELETE", b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n", OK, b"a", M_DELETE, 0),
    ("methods PATCH", b"PATCH / HTTP/1.1\r\nHost: a\r\n\r\n", OK, b"a", M_PATCH, 0),
    ("methods M-SEARCH", b"M-SEARCH * HTTP/1.1\r\nHost: 239.255.255.250:1900\r\n\r\n", OK,
     b"239.255.255.250", M_OTHER, 0),
    ("methods GETS", b"GETS / HTTP/1.1\r\nHost: a\r\n\r\n", OK, b"a", M_OTHER, 0),
    ("body after the headers", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n\x00\r\r", OK,
     b"a", M_POST, 0),
    ("HTTP/0.9", b"GET /\r\n\r\n", MALFORMED, b"", 0, 0),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\n\r\n", MALFORMED, b"", 0, 0),
    ("version junk", b"GET / HTTP/1.1x\r\n\r\n", MALFORMED, b"", 0, 0),
    ("version cut wrong", b"GET / HTTX", MALFORMED, b"", 0, 0),
    ("two spaces", b"GET  / HTTP/1.1\r\n\r\n", MALFORMED, b"", 0, 0),
    ("tab in target", b"GET /a\tb HTTP/1.1\r\n\r\n", MALFORMED, b"", 0, 0),
    ("bare CR after version", b"GET / HTTP/1.1\rX", MALFORMED, b"", 0, 0),
    ("bare CR in a header", G + b"X: a\rb\r\nHost: a\r\n\r\n", MALFORMED, b"", 0, 0),
    ("NUL in a header", G + b"X: a\x00b\r\nHost: a\r\n\r\n", MALFORMED, b"", 0, 0),
    ("space before colon", G + b"Host : a\r\n\r\n", MALFORMED, b"", 0, 0),
    ("no colon", G + b"Host a\r\n\r\n", MALFORMED, b"", 0, 0),
    ("empty name", G + b": a\r\n\r\n", MALFORMED, b"", 0, 0),
    ("fold before any field", G + b" X: a\r\nHost: a\r\n\r\n", MALFORMED, b"", 0, 0),
    ("folded Host", G + b"Host: a\r\n .example\r\n\r\n", MALFORMED, b"", 0, 0),
    ("Host with a space", G + b"Host: a b\r\n\r\n", MALFORMED, b"", 0, 0),
    ("Host with a path", G + b"Host: a/b\r\n\r\n", MALFORMED, b"", 0, 0),
    ("Host with userinfo", G + b"Host: u@a\r\n\r\n", MALFORMED, b"", 0, 0),
    ("Host port not digits", G + b"Host: a:80x\r\n\r\n", MALFORMED, b"", 0, 0),
    ("Host IPv6 unbracketed", G + b"Host: ::1\r\n\r\n", MALFORMED, b"", 0, 0),
    ("Host IPv6 unclosed", G + b"Host: [::1\r\n\r\n", MALFORMED, b"", 0, 0),
    ("Host empty literal", G + b"Host: []\r\n\r\n", MALFORMED, b"", 0, 0),
    ("Host of 255", G + b"Host: " + b"a" * 255 + b"\r\n\r\n", OK, b"a" * 255, M_GET, 0),
    ("Host of 256", G + b"Host: " + b"a" * 256 + b"\r\n\r\n", MALFORMED, b"", 0, 0),
    ("second Host not judged", G + b"Host: a\r\nHost: b c\r\n\r\n", OK, b"a", M_GET, F_MULTIPLE_HOST),
    ("headers not ended", G + b"Host: a\r\n", NEED_MORE, b"", 0, 0),
]


@pytest.mark.parametrize("what,data,status,host,method,flags", CASES, ids=[c[0] for c in CASES])
def test_case(what: str, data: bytes, status: int, host: bytes, method: int, flags: int) -> None:
    got = check(data)
    assert (got.status, got.host, got.method, got.flags) == (status, host, method, flags)
    if status == OK:
        assert got.need == re.search(rb"\n\r?\n", data).end()
    elif status == NEED_MORE:
        assert got.need == len(data) + 1
    else:
        assert got.need == 0


def test_need_is_the_header_block_length() -> None:
    head = G + b"Host: a\r\nX: y\n\r\n"
    assert check(head + b"BODY").need == len(head)


def needs_more_then_ok(data: bytes) -> None:
    """Every prefix short of the header block is NEED_MORE, every longer one the same OK."""
    whole = kernel(data)
    assert whole.status == OK
    for k in range(len(data) + 1):
        assert kernel(data[:k]) == (Request(NEED_MORE, k + 1) if k < whole.need else whole), (data, k)


def test_every_prefix_needs_more_then_ok() -> None:
    for data in [c[1] for c in CASES if c[2] == OK]:
        needs_more_then_ok(data)


def test_a_decision_survives_more_bytes() -> None:
    for what, data, status, *_ in CASES:
        if status in (NOT_HTTP, MALFORMED):
            for tail in (b"", b"\r\n\r\n", b"Host: a\r\n\r\n", b"\n\n" * 10):
                assert kernel(data + tail).status == status, what


def test_header_block_limit() -> None:
    def block(total: int) -> bytes:
        head = G + b"Host: a.example\r\nX-Pad: "
        return head + b"p" * (total - len(head) - 4) + b"\r\n\r\n"

    assert len(block(MAX_HEADER_BYTES)) == MAX_HEADER_BYTES
    assert check(block(MAX_HEADER_BYTES)) == Request(OK, MAX_HEADER_BYTES, b"a.example", M_GET, 0)
    assert check(block(MAX_HEADER_BYTES + 1)).status == MALFORMED
    cut = block(MAX_HEADER_BYTES + 100)[:MAX_HEADER_BYTES - 1]
    assert check(cut) == Request(NEED_MORE, MAX_HEADER_BYTES)
    assert check(cut + b"p").status == MALFORMED
    # a megabyte of headers: only the first MAX_HEADER_BYTES are looked at
    assert check(G + b"X: " + b"y" * 1_000_000).status == MALFORMED
    assert check(b"GET /" + b"a" * 1_000_000).status == MALFORMED
    many = G + b"".join(b"H%d: v\r\n" % i for i in range(2000)) + b"\r\n"
    assert check(many).status == MALFORMED


def test_host_written_only_within_its_room() -> None:
    buf = np.frombuffer(G + b"Host: " + b"h" * 255 + b"\r\n\r\n", np.uint8).copy()
    host = np.zeros(10 + HOST_MAX + 10, np.uint8)
    st, _need, hlen, _m, _f = request(buf, 0, buf.size, host, 10)
    assert (st, hlen) == (OK, 255)
    assert not host[:10].any() and not host[10 + HOST_MAX:].any()


def test_n_past_the_buffer_is_clamped() -> None:
    buf = np.frombuffer(b"GET / HTTP/1.1\r\nHo", np.uint8).copy()
    assert request(buf, 0, 10_000, np.zeros(HOST_MAX, np.uint8), 0)[:2] == (NEED_MORE, buf.size + 1)


# --- real clients against a recording server -------------------------------------------

class Recorder:
    """A TCP server on 127.0.0.1 that keeps what each connection sends until its
    header block ends, answers 200 and closes (CONNECT gets its 200 too, then the
    close ends the client's tunnel attempt)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # how soon the thread sees `stop`
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.stop = False
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data and b"\n\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(data)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self.stop = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def live_requests() -> list[bytes]:
    """Requests curl, http.client and urllib sent to a loopback server."""
    curl = shutil.which("curl")
    assert curl, "curl is required (apt-get install curl)"
    rec = Recorder()
    base = f"http://127.0.0.1:{rec.port}"
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}  # no proxy variables
    try:
        for args in (
            [base + "/a?b=c"],
            [f"http://localhost:{rec.port}/"],
            ["-H", "Host: Example.COM:8080", base + "/"],
            ["-H", "Host:", base + "/"],                            # curl drops the header
            ["--http1.0", "-A", "test/1", base + "/x"],
            ["-X", "PROPFIND", "-H", "Depth: 1", base + "/dav/"],
            ["-I", base + "/"],
            ["-d", "a=b&c=d", base + "/form"],
            ["-X", "DELETE", base + "/item/7"],
            ["-x", base, "http://www.example.test:8080/x?y=1"],     # absolute URI to a proxy
            ["-x", base, "http://[2001:db8::1]:8000/"],
            ["-x", base, "-H", "Host: other.example", "http://www.example.test/"],
            ["-p", "-x", base, "https://secure.example.test/"],    # CONNECT tunnel
            ["-p", "-x", base, "https://[2001:db8::2]:8443/"],
        ):
            subprocess.run([curl, "-s", "-o", "/dev/null", "--max-time", "5", *args], env=env,
                           timeout=30, check=False)
        c = HTTPConnection("127.0.0.1", rec.port, timeout=5)
        c.request("GET", "/py", headers={"Host": "py.example:81"})
        c.getresponse().read()
        c = HTTPConnection("127.0.0.1", rec.port, timeout=5)
        c.putrequest("OPTIONS", "*")
        c.endheaders()
        c.getresponse().read()
        c = HTTPConnection("127.0.0.1", rec.port, timeout=5)
        c.putrequest("GET", "/", skip_host=True)
        c.putheader("host", "first.example")
        c.putheader("HOST", "second.example")
        c.endheaders()
        c.getresponse().read()
        c = HTTPConnection("127.0.0.1", rec.port, timeout=5)
        c.request("PATCH", "/p", body=b"x" * 100, headers={"Host": "[::1]:8000"})
        c.getresponse().read()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": base}))
        opener.open("http://proxied.example/path", timeout=5).read()
    finally:
        rec.close()
    assert len(rec.received) == 19
    return rec.received


class Seen(NamedTuple):
    method: str
    host: str   # the Host header as tshark shows it
    uri: str


def tshark_requests(tmp_path: Path, requests: list[bytes]) -> list[Seen]:
    """What tshark makes of each request, sent alone in one TCP segment to port 80
    (without waiting for a body the Content-Length announces)."""
    pkts = [Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=10000 + i, dport=80, flags="PA")
            / r for i, r in enumerate(requests)]
    path = tmp_path / "requests.pcap"
    wrpcap(str(path), pkts)
    return [Seen(first(p, "http.request.method"), first(p, "http.host"), first(p, "http.request.uri"))
            for p in tshark_pdml(path, "http.desegment_body:FALSE", "tcp.desegment_tcp_streams:FALSE")]


def absolute(uri: str) -> bool:
    return bool(urllib.parse.urlsplit(uri).netloc)


def expected_host(seen: Seen) -> str:
    """The host a request names, by urllib's reading of what tshark shows."""
    if absolute(seen.uri):
        return urllib.parse.urlsplit(seen.uri).hostname or ""
    if seen.method == "CONNECT" and seen.uri[:1] not in "/*":
        return urllib.parse.urlsplit("//" + seen.uri).hostname or ""
    return (urllib.parse.urlsplit("//" + seen.host).hostname or "") if seen.host else ""


def test_live_clients_agree_with_tshark(tmp_path: Path, live_requests: list[bytes]) -> None:
    seen = tshark_requests(tmp_path, live_requests)
    assert len(seen) == len(live_requests)
    for data, s in zip(live_requests, seen):
        got = check(data)
        assert got.status == OK, data
        assert got.need == data.index(b"\r\n\r\n") + 4
        assert got.host.decode().lower() == expected_host(s).lower(), (data, s)
        assert got.method == METHODS.get(s.method.encode(), M_OTHER)
        assert bool(got.flags & F_ABSOLUTE_URI) == absolute(s.uri)
        assert bool(got.flags & F_CONNECT) == (s.method == "CONNECT")
        assert bool(got.flags & F_NO_HOST) == (not s.host and not got.host)
    hosts = [kernel(d).host for d in live_requests]
    for want in (b"127.0.0.1", b"localhost", b"Example.COM", b"www.example.test", b"2001:db8::1",
                 b"secure.example.test", b"2001:db8::2", b"py.example", b"first.example", b"::1",
                 b"proxied.example"):
        assert want in hosts
    flags = {kernel(d).host: kernel(d).flags for d in live_requests}
    assert flags[b"first.example"] == F_MULTIPLE_HOST
    assert any(kernel(d).flags == F_NO_HOST for d in live_requests)
    assert any(kernel(d).flags == F_ABSOLUTE_URI | F_HOST_MISMATCH for d in live_requests)


def test_live_requests_prefixes(live_requests: list[bytes]) -> None:
    for data in live_requests:
        needs_more_then_ok(data)


# --- the shared corpus -----------------------------------------------------------------

class Packet(NamedTuple):
    number: int      # tshark's frame number
    proto: int       # 6 or 17
    src: bytes
    sport: int
    dst: bytes
    dport: int
    seq: int
    syn: bool
    payload: bytes


def transport_packets(path: Path) -> Iterator[Packet]:
    """TCP and UDP packets of a capture (Ethernet or BSD loopback), by dpkt."""
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        link = reader.datalink()
        for number, (_ts, frame) in enumerate(reader, 1):
            ether = link == dpkt.pcap.DLT_EN10MB
            l2 = dpkt.ethernet.Ethernet(frame) if ether else dpkt.loopback.Loopback(frame)
            ip = l2.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            t = ip.data
            if isinstance(t, dpkt.tcp.TCP):
                yield Packet(number, 6, ip.src, t.sport, ip.dst, t.dport, t.seq,
                             bool(t.flags & dpkt.tcp.TH_SYN), bytes(t.data))
            elif isinstance(t, dpkt.udp.UDP):
                yield Packet(number, 17, ip.src, t.sport, ip.dst, t.dport, 0, False, bytes(t.data))


def client_stream(packets: list[Packet], at: Packet) -> bytes:
    """The bytes of `at`'s direction of its TCP connection, in sequence order."""
    same = [p for p in packets if p.proto == 6 and (p.src, p.sport, p.dst, p.dport)
            == (at.src, at.sport, at.dst, at.dport)]
    syn = [p.seq + 1 for p in same if p.syn]
    start = syn[0] if syn else min(p.seq for p in same if p.payload)
    data = bytearray()
    for p in sorted((p for p in same if p.payload), key=lambda p: p.seq):
        off = (p.seq - start) % 2**32
        if off <= len(data) < off + len(p.payload):
            data += p.payload[len(data) - off:]
    return bytes(data)


HTTP_CAPTURES = ["bug-7199", "bug-814", "bug-7851-01", "http-ipv6", "bug-2430", "datasets-04-http-dns"]


@pytest.mark.parametrize("folder", HTTP_CAPTURES)
def test_corpus_hosts_match_tshark(corpus: Path, folder: str) -> None:
    path = next((corpus / "suricata-verify" / folder).glob("*.pcap"))
    rows = tshark_fields(path, "frame.number", "http.request.method", "http.host", "http.request.uri")
    requests = [Seen(m, h, u) for n, m, h, u in rows if m]
    numbers = [int(n) for n, m, _h, _u in rows if m]
    assert requests, folder
    packets = list(transport_packets(path))
    for number, seen in zip(numbers, requests):
        at = next(p for p in packets if p.number == number)
        stream = client_stream(packets, at)
        got = check(stream)
        assert got.status == OK, (folder, stream[:200])
        assert got.host.decode().lower() == expected_host(seen).lower(), (folder, seen)
        assert got.method == METHODS.get(seen.method.encode(), M_OTHER)
    if folder == "bug-7851-01":
        assert (got.method, got.host, got.flags) == (M_CONNECT, b"", F_CONNECT | F_NO_HOST)
    if folder == "http-ipv6":
        assert got.host == b"::1"
    if folder == "bug-2430":
        assert (got.host, got.flags) == (b"qagpublic.qg1.apps.qualys.com", F_CONNECT)


# --- hypothesis: the kernel against its twin --------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
HOST_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;="
# edits that break requests where parsers tend to disagree
NASTY = [b"\r", b"\n", b"\x00", b" ", b"\t", b":", b"[", b"]", b"@", b"/", b"\r\n", b"\n\n", b"\r\n ",
         b"\nHost: x\r\n", b"\x80", b"\x7f", b"HTTP/1.1", b"://"]


def pick(alphabet: str, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[bytes]:
    return st.text(alphabet, min_size=min_size, max_size=max_size).map(str.encode)


HOSTS = st.tuples(
    st.one_of(st.sampled_from([b"a.example", b"A.Example", b"127.0.0.1", b"[::1]", b"[2001:db8::1]",
                               "bü.example".encode(), b"[v1.x]", b"[fe80::1%25eth0]", b"h" * 255]),
              pick(HOST_CHARS, 0, 16)),
    st.sampled_from([b"", b":80", b":8080", b":"])).map(b"".join)
TARGETS = st.one_of(
    st.sampled_from([b"/", b"/a/b?c=d", b"*", b"/\x80\xff", b"x"]),
    st.tuples(st.sampled_from([b"http://", b"HTTPS://", b"ws://", b"h+1.-://"]),
              st.sampled_from([b"", b"user@", b"u:p@x@"]), HOSTS,
              st.sampled_from([b"", b"/", b"/x?y", b"#f"])).map(b"".join),
    HOSTS)  # authority-form, for CONNECT
FIELD_NAMES = st.one_of(st.sampled_from([b"Host", b"host", b"HOST", b"hOsT", b"Hostx", b"X-Host",
                                         b"User-Agent"]),
                        pick(TOKEN_CHARS, 1, 8))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request that should parse: request line, header fields, the empty line."""
    method = draw(st.sampled_from(list(METHODS) + [b"M-SEARCH", b"PROPFIND", b"FOO_BAR", b"A" * 20]))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    target = draw(TARGETS)
    lines = [method + b" " + target + b" " + draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))]
    for _ in range(draw(st.integers(0, 5))):
        name = draw(FIELD_NAMES)
        value = draw(st.one_of(HOSTS, pick(TOKEN_CHARS + " \t", 0, 12)))
        lines.append(name + draw(st.sampled_from([b":", b": ", b":\t "])) + value)
        if name.lower() != b"host" and draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from([b" folded", b"\tx", b" "])))
    return eol.join(lines) + eol + draw(st.sampled_from([eol, b"\r\n", b"\n"])) + draw(st.binary(max_size=4))


@st.composite
def broken_requests(draw: st.DrawFn) -> bytes:
    """A request with one to three bytes edited, inserted or removed."""
    data = draw(requests())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.one_of(st.sampled_from(NASTY), st.binary(max_size=2))) \
            + data[i + draw(st.integers(0, 2)):]
    return data


@fuzz(600)
@given(requests(), st.integers(0, 2**16))
def test_fuzz_requests_against_reference(data: bytes, cut: int) -> None:
    check(data)
    check(data[:cut % (len(data) + 1)])


@fuzz(1200)
@given(broken_requests(), st.integers(0, 2**16))
def test_fuzz_broken_requests_against_reference(data: bytes, cut: int) -> None:
    check(data)
    check(data[:cut % (len(data) + 1)])


@settings(fuzz(0), max_examples=3)  # a tshark run per example: few, large batches
@given(st.lists(requests(), min_size=60, max_size=60))
def test_fuzz_requests_against_tshark(tmp_path_factory: pytest.TempPathFactory, batch: list[bytes]) -> None:
    """Generated requests the kernel accepts name the host tshark and urllib find.

    Left out: non-ASCII (tshark's text output mangles it) and obs-fold, after which
    tshark reads no more header fields (RFC 9112 5.2 lets a recipient replace each
    obs-fold with SP and go on, as the kernel does for fields other than Host)."""
    batch = [r for r in batch if r.isascii() and not re.search(rb"\n[ \t]", r)]
    seen = tshark_requests(tmp_path_factory.mktemp("tshark"), batch)
    compared = 0
    for data, s in zip(batch, seen):
        got = kernel(data)
        if got.status == OK and s.method:
            assert got.host.decode().lower() == expected_host(s).lower(), (data, s)
            compared += 1
    assert compared >= len(batch) // 3


@fuzz(300)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(data: bytes) -> None:
    check(data)
    check(b"GET / HTTP/1.1\r\n" + data)
