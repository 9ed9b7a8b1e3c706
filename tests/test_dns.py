"""engine.dns: query name, type and answers of DNS messages over UDP and TCP.

Checked on the shared corpus captures (tshark names the query, dpkt decodes the
answers), on queries dnspython sent to a recording server on 127.0.0.1 over UDP and
TCP and the responses it got back, on messages dnspython builds (and compresses) from
hypothesis' names and records, on hostile messages written by hand (pointer loops,
forward pointers, 1,000-label names, names of 256 octets, counts that lie, records cut
short), and by hypothesis against the slow twin (reference_dns) on generated and
broken messages.  The kernel reads a buffer that ends where the message ends and
writes outputs sized exactly, so NUMBA_BOUNDSCHECK=1 catches a stray access.

EGRESSD_FUZZ_SCALE scales the example counts (test_boundscheck runs this module again).
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
import threading
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rrset
import dpkt
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from egressd.engine.dns import (CHAIN, F_BAD_LABEL, F_BAD_RECORD, F_MORE_ANSWERS, F_NAME_TOO_LONG,
                                F_POINTER_LOOP, F_RESPONSE, F_TC, F_TRUNCATED_NAME, MALFORMED,
                                MAX_ANSWERS, MAX_CNAMES, MAX_POINTERS, MAX_RECORDS, NAME_MAX,
                                NEED_MORE, NOT_DNS, OK, message, tcp_message)
from helpers_pcap import tshark_fields
from reference_dns import V4_MAPPED, Message, reference_message, reference_tcp_message
from test_decap_differential import fuzz
from test_http import client_stream, transport_packets

LEAD = 7
NAME_AT = 2
ANS_AT = 3
A, NS, CNAME, MX, TXT, AAAA = 1, 2, 5, 15, 16, 28
QUERY, RESPONSE = 0x0100, 0x8180  # RD; QR RD RA


def run(fn, data: bytes) -> Message:
    buf = np.frombuffer(b"\xee" * LEAD + data, np.uint8).copy()
    name = np.full(NAME_AT + NAME_MAX, 0xEE, np.uint8)
    hi = np.zeros(ANS_AT + MAX_ANSWERS, np.uint64)
    lo = np.zeros(ANS_AT + MAX_ANSWERS, np.uint64)
    ttl = np.zeros(ANS_AT + MAX_ANSWERS, np.uint32)
    st, nlen, qtype, rcode, na, flags, txid = fn(buf, LEAD, len(data), name, NAME_AT, hi, lo, ttl, ANS_AT,
                                                 np.zeros(CHAIN, np.int64))
    assert 0 <= nlen <= NAME_MAX - 2 and 0 <= na <= MAX_ANSWERS
    answers = tuple((int(hi[k]) << 64 | int(lo[k]), int(ttl[k])) for k in range(ANS_AT, ANS_AT + na))
    return Message(st, name[NAME_AT:NAME_AT + nlen].tobytes(), qtype, rcode, answers, flags, txid)


def check(msg: bytes) -> Message:
    """Kernel and twin agree on a UDP message, and on it sent over TCP."""
    got = run(message, msg)
    assert got == reference_message(msg), msg[:200]
    if len(msg) < 65536:
        stream = struct.pack(">H", len(msg)) + msg
        assert run(tcp_message, stream) == got
    return got


def check_tcp(stream: bytes) -> Message:
    got = run(tcp_message, stream)
    assert got == reference_tcp_message(stream), stream[:200]
    return got


# --- building messages by hand ----------------------------------------------------------

class Wire:
    """A DNS message written field by field; names compressed against earlier ones
    (case-insensitively, as compressors do) unless told not to."""

    def __init__(self, txid: int = 0x1234, flags: int = QUERY) -> None:
        self.txid, self.flags = txid, flags
        self.body = bytearray()
        self.counts = [0, 0, 0, 0]
        self.seen: dict[tuple[bytes, ...], int] = {}

    def name(self, labels: list[bytes], compress: bool = True) -> Wire:
        for i in range(len(labels)):
            suffix = tuple(x.lower() for x in labels[i:])
            if compress and suffix in self.seen:
                self.body += struct.pack(">H", 0xC000 | self.seen[suffix])
                return self
            if 12 + len(self.body) < 0x4000:
                self.seen.setdefault(suffix, 12 + len(self.body))
            self.body += bytes([len(labels[i])]) + labels[i]
        self.body += b"\0"
        return self

    def question(self, labels: list[bytes], qtype: int = A, compress: bool = True) -> Wire:
        self.counts[0] += 1
        self.name(labels, compress)
        self.body += struct.pack(">HH", qtype, 1)
        return self

    def record(self, labels: list[bytes], rtype: int, rdata: bytes | list[bytes], ttl: int = 300,
               rclass: int = 1, compress: bool = True) -> Wire:
        self.counts[1] += 1
        self.name(labels, compress)
        at = len(self.body)
        self.body += struct.pack(">HHIH", rtype, rclass, ttl, 0)
        if isinstance(rdata, list):  # a name (CNAME, NS)
            self.name(rdata, compress)
        else:
            self.body += rdata
        struct.pack_into(">H", self.body, at + 8, len(self.body) - at - 10)
        return self

    def raw(self, data: bytes) -> Wire:
        self.body += data
        return self

    def bytes(self, **counts: int) -> bytes:
        qd, an, ns, ar = (counts.get(k, c) for k, c in zip(("qd", "an", "ns", "ar"), self.counts))
        return struct.pack(">HHHHHH", self.txid, self.flags, qd, an, ns, ar) + bytes(self.body)


def labels(name: str) -> list[bytes]:
    return [x.encode() for x in name.split(".") if x]


def v4(addr: str) -> int:
    return V4_MAPPED | int(ipaddress.IPv4Address(addr))


def v6(addr: str) -> int:
    return int(ipaddress.IPv6Address(addr))


WWW = labels("www.Example.com")


def test_query() -> None:
    got = check(Wire(txid=0xBEEF).question(WWW, AAAA).bytes())
    assert got == Message(OK, b"www.Example.com", AAAA, 0, (), 0, 0xBEEF)


def test_response_with_a_cname_chain_in_any_order() -> None:
    w = Wire(flags=RESPONSE | 3).question(WWW)
    w.record(labels("b.example.net"), A, bytes([192, 0, 2, 9]), ttl=60)          # the end of the chain
    w.record(labels("c.example.org"), CNAME, labels("b.example.net"))
    w.record(labels("WWW.example.COM"), CNAME, labels("c.example.org"), ttl=30,  # the start, case differs
             compress=False)
    w.record(labels("b.example.net"), AAAA, ipaddress.IPv6Address("2001:db8::9").packed, ttl=61)
    w.record(labels("other.example"), A, bytes([198, 51, 100, 1]))              # not on the chain
    w.record(labels("b.example.net"), A, bytes([192, 0, 2, 10]), rclass=3)       # not class IN
    w.record(WWW, TXT, b"\x03abc")
    got = check(w.bytes())
    assert got == Message(OK, b"www.Example.com", A, 3, ((v4("192.0.2.9"), 60), (v6("2001:db8::9"), 61)),
                          F_RESPONSE, 0x1234)


def test_cname_loop_ends() -> None:
    w = Wire(flags=RESPONSE).question(labels("a.example"))
    w.record(labels("a.example"), CNAME, labels("b.example"))
    w.record(labels("b.example"), CNAME, labels("a.example"))
    w.record(labels("b.example"), A, bytes(4))
    assert check(w.bytes()).answers == ((V4_MAPPED, 300),)


def test_cname_chain_limit() -> None:
    names = [labels(f"n{i}.example") for i in range(MAX_CNAMES + 2)]
    w = Wire(flags=RESPONSE).question(names[0])
    for i in range(MAX_CNAMES + 1):
        w.record(names[i], CNAME, names[i + 1])
        w.record(names[i + 1], A, bytes([10, 0, 0, i]))
    got = check(w.bytes())
    assert [a & 0xFF for a, _ in got.answers] == list(range(MAX_CNAMES))


def test_answer_limits() -> None:
    w = Wire(flags=RESPONSE).question(WWW)
    for i in range(MAX_ANSWERS + 1):
        w.record(WWW, A, bytes([10, 0, 0, i]))
    got = check(w.bytes())
    assert len(got.answers) == MAX_ANSWERS and got.flags == F_RESPONSE | F_MORE_ANSWERS
    w = Wire(flags=RESPONSE).question(WWW)
    for i in range(MAX_RECORDS):
        w.record(labels("x.example"), TXT, b"\x01x")
    w.record(WWW, A, bytes(4))  # record MAX_RECORDS + 1: not walked
    got = check(w.bytes())
    assert got.status == OK and got.answers == () and got.flags & F_MORE_ANSWERS
    got = check(w.bytes(an=MAX_RECORDS))
    assert got.status == OK and not got.flags & F_MORE_ANSWERS


def test_header_cases() -> None:
    assert check(b"") == Message(MALFORMED, flags=F_BAD_RECORD)
    assert check(bytes(11)).status == MALFORMED
    assert check(Wire().bytes()) == Message(NOT_DNS, txid=0x1234)                 # a query, no question
    assert check(Wire(flags=RESPONSE | 1).bytes()) == Message(OK, rcode=1, flags=F_RESPONSE, txid=0x1234)
    assert check(Wire(flags=6 << 11).question(WWW).bytes()).status == NOT_DNS     # opcode 6
    assert check(Wire(flags=5 << 11).question(WWW).bytes()).status == OK          # UPDATE
    tc = check(Wire(flags=RESPONSE | 0x0200).question(WWW).bytes())
    assert tc.status == OK and tc.flags == F_RESPONSE | F_TC
    root = check(Wire().question([], NS).bytes())
    assert (root.status, root.name, root.qtype) == (OK, b"", NS)
    two = Wire(flags=RESPONSE).question(WWW).question(labels("b.example")).record(WWW, A, bytes(4))
    got = check(two.bytes())
    assert (got.status, got.name, got.answers) == (OK, b"www.Example.com", ())
    assert got.flags == F_RESPONSE | F_MORE_ANSWERS


def test_label_bytes_are_copied_raw() -> None:
    raw = [b"A\x00b", b"\xff\xfe", b"-_ *"]
    assert check(Wire().question(raw).bytes()).name == b"A\x00b.\xff\xfe.-_ *"
    got = check(Wire().question([b"a.b", b"c"]).bytes())
    assert got.status == MALFORMED and got.flags == F_BAD_LABEL
    # a dot inside a label of another name is no one's business
    w = Wire(flags=RESPONSE).question(WWW).record([b"x.y"], A, bytes(4)).record(WWW, A, bytes(4))
    assert len(check(w.bytes()).answers) == 1


def header(qd: int = 1, an: int = 0, flags: int = QUERY) -> bytes:
    return struct.pack(">HHHHHH", 0x1234, flags, qd, an, 0, 0)


def ptr(off: int) -> bytes:
    return struct.pack(">H", 0xC000 | off)


HOSTILE = [
    # (what, message, status, flags)
    ("pointer to itself", header() + ptr(12) + b"\0\1\0\1", MALFORMED, F_POINTER_LOOP),
    ("pointer ahead within the name", header() + b"\1a" + ptr(16) + ptr(12) + b"\0\1\0\1", MALFORMED,
     F_POINTER_LOOP),
    # an answer's owner (at 33) points into a TXT record's data (at 31), which points back at 33
    ("two-cycle", header(an=2, flags=RESPONSE) + b"\1q\0\0\1\0\1" + ptr(12) + struct.pack(">HHIH", TXT, 1, 1, 2)
     + ptr(33) + ptr(31) + struct.pack(">HHIH", A, 1, 1, 4) + bytes(4), MALFORMED, F_RESPONSE | F_POINTER_LOOP),
    ("label then back into itself", header() + b"\1a" + ptr(12) + b"\0\1\0\1", MALFORMED, F_POINTER_LOOP),
    ("long label then back into itself", header() + b"\x3f" + b"x" * 63 + ptr(12) + b"\0\1\0\1", MALFORMED,
     F_POINTER_LOOP),  # refused at the first jump, not after the name grew past 255
    ("forward pointer", header() + ptr(20) + b"\0\1\0\1" + b"\0\0\1a\0", MALFORMED, F_POINTER_LOOP),
    ("pointer into the header", header() + ptr(11) + b"\0\1\0\1", OK, 0),
    ("pointer cut", header() + b"\xc0", MALFORMED, F_TRUNCATED_NAME),
    ("label cut", header() + b"\5abc", MALFORMED, F_TRUNCATED_NAME),
    ("no root label", header() + b"\3abc", MALFORMED, F_TRUNCATED_NAME),
    ("question type cut", header() + b"\1a\0\0\1\0", MALFORMED, F_BAD_RECORD),
    ("label type 0x40", header() + b"\x41" + bytes(65) + b"\0\1\0\1", MALFORMED, F_BAD_LABEL),
    ("label type 0x80", header() + b"\x80\0\0\1\0\1", MALFORMED, F_BAD_LABEL),
    ("1,000 labels", header() + b"\1a" * 1000 + b"\0\0\1\0\1", MALFORMED, F_NAME_TOO_LONG),
    ("127 labels: 255 octets", header() + b"\1a" * 127 + b"\0\0\1\0\1", OK, 0),
    ("128 labels", header() + b"\1a" * 128 + b"\0\0\1\0\1", MALFORMED, F_NAME_TOO_LONG),
    ("255 octets", header() + (b"\x3f" + b"x" * 63) * 3 + b"\x3d" + b"y" * 61 + b"\0\0\1\0\1", OK, 0),
    ("256 octets", header() + (b"\x3f" + b"x" * 63) * 3 + b"\x3e" + b"y" * 62 + b"\0\0\1\0\1", MALFORMED,
     F_NAME_TOO_LONG),
]


@pytest.mark.parametrize("what,msg,status,flags", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile(what: str, msg: bytes, status: int, flags: int) -> None:
    got = check(msg)
    assert (got.status, got.flags) == (status, flags)
    if what.endswith("octets") and status == OK:
        assert len(got.name) == 253


def test_pointer_hops() -> None:
    """A CNAME target reached through MAX_POINTERS pointers is read; one more is not.

    The pointers, each to the one before, sit in an earlier TXT record's data (the
    question has only the header before it)."""
    for jumps, status in ((MAX_POINTERS, OK), (MAX_POINTERS + 1, MALFORMED)):
        question = b"\1q\0\0\1\0\1"
        base = 12 + len(question) + 12          # past the TXT record's owner and fixed fields
        chain, offs = bytearray(b"\1z\0"), [base]
        for _ in range(jumps - 1):
            offs.append(base + len(chain))
            chain += ptr(offs[-2])
        body = question + ptr(12) + struct.pack(">HHIH", TXT, 1, 1, len(chain)) + chain
        body += ptr(12) + struct.pack(">HHIH", CNAME, 1, 1, 2) + ptr(offs[-1])
        body += b"\1z\0" + struct.pack(">HHIH", A, 1, 5, 4) + bytes([1, 2, 3, 4])
        got = check(header(qd=1, an=3, flags=RESPONSE) + body)
        assert got.status == status, jumps
        if status == OK:
            assert got.answers == ((v4("1.2.3.4"), 5),)
        else:
            assert got.flags == F_RESPONSE | F_POINTER_LOOP


def test_records_cut_or_lying() -> None:
    w = Wire(flags=RESPONSE).question(WWW).record(WWW, A, bytes([1, 2, 3, 4])).record(WWW, A, bytes(4))
    whole = w.bytes()
    assert len(check(whole).answers) == 2
    assert check(w.bytes(an=3)).flags == F_RESPONSE | F_TRUNCATED_NAME   # ANCOUNT says 3
    for cut in range(12, len(whole)):
        got = check(whole[:cut])
        assert got.status == MALFORMED, cut
    assert check(whole[:-1]).flags == F_RESPONSE | F_BAD_RECORD
    assert check(Wire(flags=RESPONSE).question(WWW).record(WWW, A, bytes(5)).bytes()).flags \
        == F_RESPONSE | F_BAD_RECORD
    assert check(Wire(flags=RESPONSE).question(WWW).record(WWW, AAAA, bytes(4)).bytes()).flags \
        == F_RESPONSE | F_BAD_RECORD
    # a CNAME whose name runs out of its RDATA
    w = Wire(flags=RESPONSE).question(WWW).raw(ptr(12) + struct.pack(">HHIH", CNAME, 1, 1, 2) + b"\1a\0")
    assert check(w.bytes(an=1)).flags == F_RESPONSE | F_BAD_RECORD
    # an odd-sized A of another class is fine
    w = Wire(flags=RESPONSE).question(WWW).record(WWW, A, bytes(5), rclass=3).record(WWW, A, bytes(4))
    assert len(check(w.bytes()).answers) == 1


def test_tcp_stream() -> None:
    msg = Wire(flags=RESPONSE).question(WWW).record(WWW, A, bytes([9, 9, 9, 9])).bytes()
    stream = struct.pack(">H", len(msg)) + msg
    for k in range(len(stream)):
        assert check_tcp(stream[:k]) == Message(NEED_MORE), k
    whole = check_tcp(stream)
    assert whole.answers == ((v4("9.9.9.9"), 300),)
    second = struct.pack(">H", 3) + b"abc"
    assert check_tcp(stream + second) == whole          # only the first message counts
    assert check_tcp(b"\0\0").status == MALFORMED       # an empty message
    assert check_tcp(struct.pack(">H", len(msg) - 1) + msg).status == MALFORMED


def test_tcp_thousand_label_name() -> None:
    msg = header() + b"\1a" * 1000 + b"\0\0\1\0\1"
    got = check_tcp(struct.pack(">H", len(msg)) + msg)
    assert (got.status, got.flags) == (MALFORMED, F_NAME_TOO_LONG)


# --- the shared corpus --------------------------------------------------------------------

DNS_CAPTURES = ["dns_dns-query_dns-detect-query-01", "dns_dns-query_dns-detect-query-02",
                "dns_dns-query_dns-detect-query-03", "dns_dns-query_dns-detect-query-04",
                "dns_dns-query_dns-detect-query-05", "dns_dns-rcode", "datasets-match-subdomain",
                "detect-dotprefix-01", "detect-dotprefix-02", "detect-dotprefix-03", "domain-keyword",
                "decode-teredo-01", "datasets-04-http-dns"]


def dpkt_answers(payload: bytes) -> tuple[tuple[int, int], ...]:
    """The addresses of the query name and its CNAME chain, as dpkt decodes the answers."""
    d = dpkt.dns.DNS(payload)
    chain = [d.qd[0].name.lower()]
    for _ in range(MAX_CNAMES):
        nxt = [rr.cname.lower() for rr in d.an if rr.type == CNAME and rr.cls == 1
               and rr.name.lower() == chain[-1]]
        if not nxt:
            break
        chain.append(nxt[0])
    out = []
    for rr in d.an:
        if rr.cls == 1 and rr.name.lower() in chain and rr.type in (A, AAAA):
            addr = int.from_bytes(rr.rdata, "big")
            out.append((V4_MAPPED | addr if rr.type == A else addr, rr.ttl))
    return tuple(out[:MAX_ANSWERS])


@pytest.mark.parametrize("folder", DNS_CAPTURES)
def test_corpus_matches_tshark_and_dpkt(corpus: Path, folder: str) -> None:
    path = next((corpus / "suricata-verify" / folder).glob("*.pcap"))
    rows = {int(r[0]): r[1:] for r in tshark_fields(path, "frame.number", "dns.qry.name", "dns.qry.type",
                                                      "dns.flags.response", "dns.flags.rcode", "dns.id")
            if r[1]}
    packets = list(transport_packets(path))
    seen = 0
    for p in packets:
        if p.number not in rows or 53 not in (p.sport, p.dport) or not p.payload:
            continue
        name, qtype, response, rcode, txid = rows[p.number]
        if p.proto == 17:
            payload = p.payload
            got = check(payload)
        else:
            stream = client_stream(packets, p)
            got = check_tcp(stream)
            payload = stream[2:]
        assert got.status == OK, (folder, p.number)
        assert (got.name.decode(), got.qtype, got.txid) == (name, int(qtype), int(txid, 16))
        assert rcode == "" or got.rcode == int(rcode)  # tshark shows no rcode for queries
        assert bool(got.flags & F_RESPONSE) == (response == "1")
        if got.flags & F_RESPONSE:
            assert got.answers == dpkt_answers(payload), (folder, p.number)
        seen += 1
    assert seen == len(rows)


def test_corpus_answers_seen(corpus: Path) -> None:
    """The responses with CNAME chains give the addresses tshark shows for them."""
    path = corpus / "suricata-verify" / "domain-keyword" / "input.pcap"
    got = {p.number: check(p.payload) for p in transport_packets(path)}
    assert [a for a, _ in got[2].answers] == [v4("35.209.168.153")]
    assert [a for a, _ in got[4].answers] == [v4(x) for x in ("151.101.0.81", "151.101.64.81",
                                                              "151.101.128.81", "151.101.192.81")]


def test_corpus_truncated_rname(corpus: Path) -> None:
    """A 16 KB DNS-over-TCP query whose name goes on for 1,025 bytes (Suricata's
    rrname_truncated case; tshark calls it "Name too long")."""
    path = corpus / "suricata-verify" / "dns_dns-truncated-rname" / "poc2.pcap"
    packets = list(transport_packets(path))
    first = next(p for p in packets if p.payload and p.dport == 1053)
    stream = client_stream(packets, first)
    got = check_tcp(stream)
    assert (got.status, got.flags) == (MALFORMED, F_NAME_TOO_LONG)
    assert check_tcp(stream[:1000]).status == NEED_MORE
    out = subprocess.run(["tshark", "-r", str(path), "-d", "tcp.port==1053,dns"], capture_output=True,
                         text=True, timeout=120).stdout
    assert "Name too long" in out


# --- real clients against a recording server ----------------------------------------------

ZONE = {  # name -> records the recording server answers with
    "www.example.test.": [("www.example.test.", "CNAME", "edge.example.net."),
                          ("edge.example.net.", "A", "192.0.2.1"), ("edge.example.net.", "A", "192.0.2.2")],
    "v6.example.test.": [("v6.example.test.", "AAAA", "2001:db8::53")],
    "xn--bcher-kva.example.": [("xn--bcher-kva.example.", "A", "198.51.100.7")],
}


class DnsRecorder:
    """UDP and TCP on 127.0.0.1; keeps each query as received and each response as sent."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.create_server(("127.0.0.1", self.port))
        self.queries: list[tuple[str, bytes]] = []
        self.responses: list[tuple[str, bytes]] = []
        for sock in (self.udp, self.tcp):
            sock.settimeout(0.1)
        self.stop = False
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._udp, self._tcp)]
        for t in self.threads:
            t.start()

    def answer(self, wire: bytes) -> bytes:
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        for owner, rtype, value in ZONE.get(q.question[0].name.to_text().lower(), []):
            r.answer.append(dns.rrset.from_text(owner, 120, "IN", rtype, value))
        if not r.answer:
            r.set_rcode(3)
        return r.to_wire()

    def _udp(self) -> None:
        while not self.stop:
            try:
                wire, peer = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            out = self.answer(wire)
            self.queries.append(("udp", wire))
            self.responses.append(("udp", out))
            self.udp.sendto(out, peer)

    def _tcp(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while len(data) < 2 or len(data) < 2 + struct.unpack(">H", data[:2])[0]:
                    data += conn.recv(65535)
                out = self.answer(data[2:])
                self.queries.append(("tcp", data))
                self.responses.append(("tcp", struct.pack(">H", len(out)) + out))
                conn.sendall(self.responses[-1][1])

    def close(self) -> None:
        self.stop = True
        for t in self.threads:
            t.join(10)
        self.udp.close()
        self.tcp.close()


@pytest.fixture(scope="module")
def live_dns() -> DnsRecorder:
    rec = DnsRecorder()
    try:
        for name, rtype, how in (("www.example.test", "A", "udp"), ("WWW.Example.Test", "A", "tcp"),
                                 ("v6.example.test", "AAAA", "udp"), ("bücher.example", "A", "udp"),
                                 ("nx.example.test", "TXT", "tcp"), ("v6.example.test", "ANY", "udp")):
            q = dns.message.make_query(name, rtype, use_edns=0, want_dnssec=True)
            send = dns.query.udp if how == "udp" else dns.query.tcp
            send(q, "127.0.0.1", port=rec.port, timeout=5)
    finally:
        rec.close()
    assert len(rec.queries) == 6
    return rec


def test_live_queries_and_responses(tmp_path: Path, live_dns: DnsRecorder) -> None:
    results = []
    for (how, wire), (_, resp) in zip(live_dns.queries, live_dns.responses):
        q = check(wire) if how == "udp" else check_tcp(wire)
        r = check(resp) if how == "udp" else check_tcp(resp)
        assert q.status == r.status == OK
        assert q.name == r.name and q.txid == r.txid and r.flags & F_RESPONSE
        results += [(how, wire, q), (how, resp, r)]
    by_name = {r.name.lower(): r for _how, _w, r in results if r.flags & F_RESPONSE}
    assert by_name[b"www.example.test"].answers == ((v4("192.0.2.1"), 120), (v4("192.0.2.2"), 120))
    assert by_name[b"xn--bcher-kva.example"].answers == ((v4("198.51.100.7"), 120),)
    assert by_name[b"nx.example.test"].rcode == 3
    # tshark names the same queries the same way
    pkts = []
    for i, (how, data, _r) in enumerate(results):
        layer = UDP(sport=20000 + i, dport=53) if how == "udp" else TCP(sport=20000 + i, dport=53, flags="PA")
        pkts.append(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / layer / data)
    wrpcap(str(tmp_path / "dns.pcap"), pkts)
    rows = tshark_fields(tmp_path / "dns.pcap", "dns.qry.name", "dns.qry.type", "dns.flags.rcode")
    assert [(r.name.decode(), r.qtype) for _h, _d, r in results] == [(n, int(t)) for n, t, _c in rows]
    assert [r.rcode for _h, _d, r in results if r.flags & F_RESPONSE] == [int(c) for _n, _t, c in rows if c]


# --- dnspython as the oracle --------------------------------------------------------------

LABEL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


def dns_labels(max_labels: int = 5) -> st.SearchStrategy[list[bytes]]:
    label = st.one_of(st.text(LABEL_CHARS, min_size=1, max_size=12).map(str.encode),
                      st.binary(min_size=1, max_size=63).filter(lambda b: b"." not in b))
    return st.lists(label, max_size=max_labels).filter(lambda ls: sum(len(x) + 1 for x in ls) < 250)


@st.composite
def dnspython_responses(draw: st.DrawFn) -> dns.message.Message:
    qname = dns.name.Name(draw(dns_labels()) + [b""])
    q = dns.message.make_query(qname, draw(st.sampled_from(["A", "AAAA", "TXT", "MX"])),
                               id=draw(st.integers(0, 0xFFFF)))
    r = dns.message.make_response(q)
    chain = [qname]
    for _ in range(draw(st.integers(0, 3))):
        chain.append(dns.name.Name(draw(dns_labels(3)) + [b"example", b""]))
    rrsets = []
    for a, b in zip(chain, chain[1:]):
        rrsets.append(dns.rrset.from_text(a, 300, "IN", "CNAME", b.to_text()))
    others = [dns.name.Name(draw(dns_labels(3)) + [b""]) for _ in range(draw(st.integers(0, 2)))]
    for owner in draw(st.lists(st.sampled_from(chain + others), max_size=4)):
        if draw(st.booleans()):
            addrs = draw(st.sets(st.integers(0, 2**32 - 1), min_size=1, max_size=3))
            rrsets.append(dns.rrset.from_text(owner, draw(st.integers(0, 2**31 - 1)), "IN", "A",
                                              *map(str, map(ipaddress.IPv4Address, addrs))))
        else:
            addr = ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1)))
            rrsets.append(dns.rrset.from_text(owner, 7, "IN", "AAAA", str(addr)))
    for rr in draw(st.permutations(rrsets)):
        r.answer.append(rr)
    r.flags |= dns.flags.AA if draw(st.booleans()) else 0
    return r


@fuzz(300)
@given(dnspython_responses())
def test_dnspython_messages(r: dns.message.Message) -> None:
    wire = r.to_wire()  # compresses, and shuffles the records of each set (hypothesis seeds `random`)
    got = check(wire)
    qname = dns.message.from_wire(wire).question[0].name  # as dnspython reads its own bytes
    parsed = r  # rrsets as written (from_wire would merge two of the same name and type)
    assert got.status == OK
    assert got.name == b".".join(qname.labels[:-1])
    chain = [qname]
    for _ in range(MAX_CNAMES):
        nxt = [rrs[0].target for rrs in parsed.answer if rrs.rdtype == CNAME and rrs.name == chain[-1]]
        if not nxt:
            break
        chain.append(nxt[0])
    want = []
    for rrs in parsed.answer:
        if rrs.rdtype in (A, AAAA) and rrs.name in chain:
            want += [(v4(rd.address) if rrs.rdtype == A else v6(rd.address), rrs.ttl) for rd in rrs]
    assert sorted(got.answers) == sorted(want[:MAX_ANSWERS]) or len(want) > MAX_ANSWERS
    assert len(got.answers) == min(len(want), MAX_ANSWERS)


# --- hypothesis: the kernel against its twin ----------------------------------------------

@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """Queries and responses written by Wire: names compressed or not, chains of CNAMEs
    among other records in any order."""
    response = draw(st.booleans())
    w = Wire(txid=draw(st.integers(0, 0xFFFF)),
             flags=(RESPONSE if response else QUERY) | draw(st.sampled_from([0, 0, 0, 3, 0x0200, 2 << 11])))
    qname = draw(dns_labels())
    w.question(qname, draw(st.sampled_from([A, AAAA, TXT, NS])), draw(st.booleans()))
    if response:
        names = [qname] + [draw(dns_labels(3)) + [b"ex"] for _ in range(draw(st.integers(0, 3)))]
        recs = [(a, CNAME, b) for a, b in zip(names, names[1:])]
        recs += [(draw(st.sampled_from(names)), draw(st.sampled_from([A, AAAA, TXT, MX])), None)
                 for _ in range(draw(st.integers(0, 6)))]
        # owners written in another case still name the same node
        recs = [([x.swapcase() for x in owner] if draw(st.integers(0, 3)) == 0 else owner, t, r)
                for owner, t, r in recs]
        for owner, rtype, target in draw(st.permutations(recs)):
            if rtype == CNAME:
                rdata = target
            elif rtype == A:
                rdata = draw(st.binary(min_size=4, max_size=4))
            elif rtype == AAAA:
                rdata = draw(st.binary(min_size=16, max_size=16))
            else:
                rdata = draw(st.binary(max_size=8))
            w.record(owner, rtype, rdata, ttl=draw(st.integers(0, 2**32 - 1)), compress=draw(st.booleans()))
    return w.bytes()


NASTY = [b"\xc0", b"\xc0\x0c", b"\x3f", b"\x40", b"\0", b"\xff", b"\1.", b"\xc0\xff"]


@st.composite
def broken_messages(draw: st.DrawFn) -> bytes:
    data = draw(messages())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 3))
        if kind == 0:    # a count
            i = draw(st.sampled_from([4, 6]))
            data = data[:i] + struct.pack(">H", draw(st.integers(0, 70))) + data[i + 2:]
        elif kind == 1:  # a cut
            data = data[:draw(st.integers(0, len(data)))]
        else:            # bytes replaced or inserted
            i = draw(st.integers(0, len(data)))
            data = data[:i] + draw(st.one_of(st.sampled_from(NASTY), st.binary(max_size=2))) \
                + data[i + draw(st.integers(0, 2)):]
    return data


@fuzz(800)
@given(messages())
def test_fuzz_messages_against_reference(data: bytes) -> None:
    assert check(data).status == OK


@fuzz(1500)
@given(broken_messages())
def test_fuzz_broken_messages_against_reference(data: bytes) -> None:
    check(data)


@fuzz(300)
@given(st.binary(max_size=80), st.binary(max_size=3))
def test_fuzz_random_bytes(data: bytes, prefix: bytes) -> None:
    check(data)
    check(header(qd=1, an=2, flags=RESPONSE) + data)
    check_tcp(prefix + data)
