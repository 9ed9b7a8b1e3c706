"""ClientHellos parsed per second by engine.tls.client_hello, on one core.

    python -m egressd.bench.tls [--hellos 100000] [--distinct 10000] [--rounds 5] [--seed 0]

Real ClientHellos (Python's ssl module through a MemoryBIO, no network: TLS 1.3 and
1.2, names of 5 to 60 bytes, with and without ALPN), `--distinct` of them generated
(~0.1 ms each) and laid out end to end, cycling, as `--hellos` TCP client streams in
one buffer.  A small njit loop calls client_hello on each stream, as the l7 stage does
for a flow's first segment.  Each pass is checked (every stream OK, the total of the
name lengths what the generator put in) before its time counts; the best of
`--rounds` passes is reported, after a warm-up pass.  The second row is the same
ClientHellos cut into three TLS records each (the reassembly path).
"""
from __future__ import annotations

import argparse
import os
import platform
import ssl
import time

import numpy as np
from numba import njit

from egressd.engine import tls
from egressd.flowspec import client_context, ssl_client_hello

ALPN_CHOICES = (None, ["h2", "http/1.1"], ["http/1.1"], ["h2"])


def random_name(rng: np.random.Generator) -> str:
    labels = []
    for _ in range(rng.integers(1, 5)):
        size = int(rng.integers(1, 15))
        labels.append("".join(chr(c) for c in rng.integers(97, 123, size)))
    return ".".join(labels) + rng.choice([".com", ".net", ".example.org", ".co.uk"])


def generate(count: int, seed: int = 0) -> tuple[list[bytes], list[int]]:
    """`count` ClientHellos and the length of the name each carries."""
    rng = np.random.default_rng(seed)
    contexts = {(k, tls12): client_context(alpn, tls12) for k, alpn in enumerate(ALPN_CHOICES)
                for tls12 in (False, True)}
    hellos, names = [], []
    for _ in range(count):
        name = random_name(rng)
        ctx = contexts[int(rng.integers(len(ALPN_CHOICES))), bool(rng.random() < 0.25)]
        hellos.append(ssl_client_hello(name, ctx=ctx))
        names.append(len(name))
    return hellos, names


def in_records(hello: bytes, pieces: int) -> bytes:
    """The same handshake message cut into `pieces` records of about equal size."""
    message = hello[5:5 + int.from_bytes(hello[3:5], "big")]
    cuts = np.linspace(0, len(message), pieces + 1).astype(int)
    return b"".join(hello[:3] + int(b - a).to_bytes(2, "big") + message[a:b]
                    for a, b in zip(cuts[:-1], cuts[1:]))


def layout(streams: list[bytes], count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` streams, cycling through `streams`, end to end in one buffer."""
    order = np.arange(count) % len(streams)
    sizes = np.array([len(s) for s in streams], np.int64)[order]
    off = np.zeros(count, np.int64)
    np.cumsum(sizes[:-1], out=off[1:])
    buf = np.frombuffer(b"".join(streams[k] for k in order), np.uint8).copy()
    return buf, off, sizes


@njit(cache=True, nogil=True)
def parse_all(buf, off, size, scratch, name, alpn):
    """Returns (streams that parsed OK, total name bytes)."""
    ok = 0
    name_bytes = 0
    for i in range(off.shape[0]):
        st, _need, nl, _al, _ver, _fl = tls.client_hello(buf, off[i], size[i], True, scratch, name, 0,
                                                          alpn, 0)
        ok += st == tls.OK
        name_bytes += nl
    return ok, name_bytes


def rate(buf: np.ndarray, off: np.ndarray, size: np.ndarray, expect_names: int,
         rounds: int) -> tuple[float, list[float]]:
    """Best ClientHellos/s over `rounds` timed passes (after one warm-up pass)."""
    scratch = np.zeros(tls.MAX_CLIENT_HELLO, np.uint8)
    name = np.zeros(tls.SNI_MAX, np.uint8)
    alpn = np.zeros(tls.ALPN_MAX, np.uint8)
    times = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        ok, name_bytes = parse_all(buf, off, size, scratch, name, alpn)
        t1 = time.perf_counter()
        assert ok == off.shape[0] and name_bytes == expect_names, (ok, name_bytes, expect_names)
        if r:
            times.append(t1 - t0)
    return off.shape[0] / min(times), times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hellos", type=int, default=100_000, help="streams parsed per pass")
    ap.add_argument("--distinct", type=int, default=10_000, help="ClientHellos generated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    hellos, names = generate(min(a.distinct, a.hellos), a.seed)
    t1 = time.perf_counter()
    parse_all(*layout(hellos[:1], 1), np.zeros(tls.MAX_CLIENT_HELLO, np.uint8),
              np.zeros(tls.SNI_MAX, np.uint8), np.zeros(tls.ALPN_MAX, np.uint8))
    t2 = time.perf_counter()
    expect = int(np.array(names)[np.arange(a.hellos) % len(names)].sum())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}")
    print(f"generated {len(hellos)} ClientHellos in {t1 - t0:.1f} s; numba warm-up {t2 - t1:.1f} s")
    print(f"{'layout':<22} {'hellos':>8} {'avg B':>6} {'best s':>8} {'hellos/s':>12} {'ns/hello':>9} "
          f"{'MB/s':>7}  runs s")
    for label, streams in (("one record", hellos),
                           ("three records", [in_records(h, 3) for h in hellos])):
        buf, off, size = layout(streams, a.hellos)
        r, times = rate(buf, off, size, expect, a.rounds)
        print(f"{label:<22} {a.hellos:>8} {buf.size / a.hellos:>6.0f} {min(times):>8.4f} "
              f"{r:>12,.0f} {1e9 / r:>9.0f} {buf.size / min(times) / 1e6:>7.0f}  "
              + " ".join(f"{t:.3f}" for t in times))


if __name__ == "__main__":
    main()
