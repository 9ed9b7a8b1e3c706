"""HTTP requests and DNS messages parsed per second by engine.http / engine.dns, on one core.

    python -m egressd.bench.names [--count 100000] [--rounds 5] [--seed 0]

Each row lays `--count` messages end to end in one buffer (offsets and lengths beside
it) and times a small njit loop that calls the parser on each, as the l7 stage does
for a flow's first bytes.  HTTP: requests shaped like curl's (~80 B), a browser's
(~450 B: user agent, accept lists, a cookie) and a proxy client's (absolute URI or
CONNECT), hosts of 5 to 60 bytes, 1 in 4 with a port.  DNS: queries with an EDNS OPT
record as stub resolvers send them, responses with a CNAME and two A records
(compressed), and a hostile response built to cost the most: 64 answers (MAX_RECORDS)
whose names each take MAX_POINTERS jumps.  Every pass is checked (all OK, the total of
the name lengths what the generator wrote) before its time counts; the best of
`--rounds` passes after a warm-up pass is reported.
"""
from __future__ import annotations

import argparse
import os
import platform
import struct
import time

import numpy as np
from numba import njit

from egressd.engine import dns, http

UA_BROWSER = (b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              b"Chrome/131.0.0.0 Safari/537.36")


def random_name(rng: np.random.Generator) -> str:
    labels = ["".join(chr(c) for c in rng.integers(97, 123, int(rng.integers(1, 15))))
              for _ in range(rng.integers(1, 4))]
    return ".".join(labels) + str(rng.choice([".com", ".net", ".example.org", ".co.uk"]))


def http_request(rng: np.random.Generator, host: str) -> bytes:
    h = host.encode()
    hp = h + b":%d" % rng.integers(1024, 65536) if rng.integers(4) == 0 else h
    kind = rng.integers(8)
    if kind < 3:
        return (b"GET /index.html HTTP/1.1\r\nHost: " + hp + b"\r\nUser-Agent: curl/8.5.0\r\n"
                b"Accept: */*\r\n\r\n")
    if kind == 3:
        return (b"GET http://" + hp + b"/a/b?c=d HTTP/1.1\r\nHost: " + hp
                + b"\r\nProxy-Connection: Keep-Alive\r\n\r\n")
    if kind == 4:
        return b"CONNECT " + h + b":443 HTTP/1.1\r\nHost: " + h + b":443\r\nUser-Agent: curl/8.5.0\r\n\r\n"
    return (b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: " + hp + b"\r\nConnection: keep-alive\r\n"
            b"User-Agent: " + UA_BROWSER + b"\r\nAccept: text/html,application/xhtml+xml,application/xml;"
            b"q=0.9,image/avif,image/webp,*/*;q=0.8\r\nAccept-Encoding: gzip, deflate, br\r\n"
            b"Accept-Language: en-US,en;q=0.9\r\nCookie: session=" + b"%016x" % rng.integers(2**62)
            + b"; theme=dark\r\nUpgrade-Insecure-Requests: 1\r\n\r\n")


def wire_name(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"


def dns_query(rng: np.random.Generator, name: str) -> bytes:
    opt = b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0)  # EDNS(0), 1232-byte payload
    return (struct.pack(">HHHHHH", rng.integers(65536), 0x0120, 1, 0, 0, 1) + wire_name(name)
            + struct.pack(">HH", int(rng.choice([1, 28, 65])), 1) + opt)


def dns_response(rng: np.random.Generator, name: str) -> bytes:
    """A CNAME to cdn.<name>, then two A records of the target (all compressed)."""
    q = struct.pack(">HHHHHH", rng.integers(65536), 0x8180, 1, 3, 0, 0) + wire_name(name) + b"\0\1\0\1"
    cname = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 300, 6) + b"\3cdn\xc0\x0c"
    target = len(q) + 12  # where "cdn" starts: past the CNAME's owner pointer and fixed fields
    a = b"".join(struct.pack(">HHHIH", 0xC000 | target, 1, 1, 60, 4) + rng.bytes(4) for _ in range(2))
    return q + cname + a


def dns_hostile() -> bytes:
    """MAX_RECORDS CNAME answers whose owner and target names each take MAX_POINTERS
    jumps: about the most name walking one message can ask for."""
    question = wire_name("a.example") + b"\0\1\0\1"
    base = 12 + len(question) + 12
    chain, offs = bytearray(b"\1z\0"), [base]
    for _ in range(dns.MAX_POINTERS - 1):
        offs.append(base + len(chain))
        chain += struct.pack(">H", 0xC000 | offs[-2])
    body = question + b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 1, len(chain)) + chain
    for _ in range(dns.MAX_RECORDS - 1):
        body += struct.pack(">HHHIH", 0xC000 | offs[-1], 5, 1, 1, 2) + struct.pack(">H", 0xC000 | offs[-1])
    return struct.pack(">HHHHHH", 1, 0x8180, 1, dns.MAX_RECORDS, 0, 0) + body


def layout(messages: list[bytes], count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` messages end to end (cycling through `messages`): buffer, offsets, lengths."""
    picks = [messages[i % len(messages)] for i in range(count)]
    size = np.array([len(m) for m in picks], np.int64)
    off = np.zeros(count, np.int64)
    off[1:] = np.cumsum(size)[:-1]
    return np.frombuffer(b"".join(picks), np.uint8).copy(), off, size


@njit(cache=True, nogil=True)
def parse_http(buf, off, size, host):
    ok = 0
    names = 0
    for i in range(off.shape[0]):
        st, _need, hl, _m, _f = http.request(buf, off[i], size[i], host, 0)
        ok += st == http.OK
        names += hl
    return ok, names


@njit(cache=True, nogil=True)
def parse_dns(buf, off, size, name, hi, lo, ttl, chain):
    ok = 0
    names = 0
    for i in range(off.shape[0]):
        st, nl, _qt, _rc, na, _f, _tx = dns.message(buf, off[i], size[i], name, 0, hi, lo, ttl, 0, chain)
        ok += st == dns.OK
        names += nl + na
    return ok, names


def best(run, count: int, expect: int, rounds: int) -> list[float]:
    times = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        ok, names = run()
        t1 = time.perf_counter()
        assert ok == count and names == expect, (ok, count, names, expect)
        if r:
            times.append(t1 - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000, help="messages parsed per pass")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    hosts = [random_name(rng) for _ in range(min(a.count, 10_000))]

    host = np.zeros(http.HOST_MAX, np.uint8)
    name = np.zeros(dns.NAME_MAX, np.uint8)
    ans = (np.zeros(dns.MAX_ANSWERS, np.uint64), np.zeros(dns.MAX_ANSWERS, np.uint64),
           np.zeros(dns.MAX_ANSWERS, np.uint32), np.zeros(dns.CHAIN, np.int64))
    t0 = time.perf_counter()
    parse_http(*layout([b"GET / HTTP/1.1\r\n\r\n"], 1), host)
    parse_dns(*layout([dns_query(rng, "a")], 1), name, *ans)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; numba warm-up {time.perf_counter() - t0:.1f} s")
    print(f"{'messages':<24} {'count':>8} {'avg B':>6} {'best s':>8} {'messages/s':>12} {'ns/msg':>8} "
          f"{'MB/s':>7}  runs s")

    def names_of(picked: list[str], extra: int = 0) -> int:
        return sum(len(picked[i % len(picked)]) + extra for i in range(a.count))

    rows = [
        ("HTTP requests", [http_request(rng, h) for h in hosts], names_of(hosts), True),
        ("DNS queries", [dns_query(rng, h) for h in hosts], names_of(hosts), False),
        ("DNS responses (CNAME+2A)", [dns_response(rng, h) for h in hosts], names_of(hosts, 2), False),
        ("DNS hostile response", [dns_hostile()], a.count * len("a.example"), False),
    ]
    for label, msgs, expect, is_http in rows:
        buf, off, size = layout(msgs, a.count)
        if is_http:
            times = best(lambda: parse_http(buf, off, size, host), a.count, expect, a.rounds)
        else:
            times = best(lambda: parse_dns(buf, off, size, name, *ans), a.count, expect, a.rounds)
        t = min(times)
        print(f"{label:<24} {a.count:>8} {buf.size / a.count:>6.0f} {t:>8.4f} {a.count / t:>12,.0f} "
              f"{1e9 * t / a.count:>8.0f} {buf.size / t / 1e6:>7.0f}  " + " ".join(f"{x:.3f}" for x in times))


if __name__ == "__main__":
    main()
