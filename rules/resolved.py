"""What the DNS answers egressd saw resolved: address -> names, within their TTL.

Two uses, both off unless the policy asks: resolved-domain rules (AWS's
`AWS_ROUTE_53_RESOLVED_DOMAIN` target type and `aws_route_53_resolved_domain`
keyword: the connection's destination was resolved for a name in a list), and the
SNI resolution check (a TLS or QUIC flow whose SNI was never resolved to its
destination address: the SNI-spoofing / domain-fronting bypass of SNI filters).

AWS learns from Route 53 Resolver; egressd learns from the A/AAAA answers (of the
query name and its CNAMEs) in DNS responses it forwards, so the client must resolve
through the appliance.  Entries are (address, key) -> expiry, key being either a
resolved-domain list (its set id, tagged) or a keyed hash of the name.  The hash key
is drawn at random per process: the table holds no names, and without the key no one
can make an unrelated name collide with an allowed one.  The table is bounded: a
bucket of 16 entries per hash, a full bucket gives up its entry that expires first.
"""
from __future__ import annotations

import secrets
from typing import NamedTuple

import numpy as np
from numba import njit

BUCKET = 16
TAG_SET = np.uint64(1 << 63)   # key of a resolved-domain set membership (name keys have it clear)
_M = np.uint64(0x9E3779B97F4A7C15)


class Bindings(NamedTuple):
    k_hi: np.ndarray
    k_lo: np.ndarray
    key: np.ndarray
    expiry: np.ndarray       # ns; 0: empty
    seed: np.ndarray         # (1,) the name hash key
    counters: np.ndarray     # learned, evicted

    @classmethod
    def empty(cls, capacity: int = 1 << 16) -> "Bindings":
        if capacity < BUCKET or capacity & (capacity - 1):
            raise ValueError("binding capacity must be a power of two of at least 16")
        return cls(np.zeros(capacity, np.uint64), np.zeros(capacity, np.uint64),
                   np.zeros(capacity, np.uint64), np.zeros(capacity, np.int64),
                   np.array([secrets.randbits(64)], np.uint64), np.zeros(2, np.int64))


@njit(cache=True, nogil=True, _nrt=False)
def name_key(seed, b, off, n):
    """Keyed 63-bit hash of b[off:off+n] (a normalized name)."""
    h = seed ^ np.uint64(n)
    for k in range(n):
        h = (h ^ np.uint64(b[np.uintp(off + k)])) * _M
        h ^= h >> np.uint64(29)
    return h & ~TAG_SET


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _base(bt, hi, lo, key):
    h = (hi * _M) ^ (lo + key) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= h >> np.uint64(32)
    return np.int64(h & np.uint64(bt.expiry.shape[0] - BUCKET))


@njit(cache=True, nogil=True, _nrt=False)
def bind(bt, hi, lo, key, expiry):
    """Remember (address, key) until `expiry` (a longer TTL extends it)."""
    base = _base(bt, hi, lo, key)
    victim = base
    for j in range(base, base + BUCKET):
        if bt.expiry[j] != 0 and bt.k_hi[j] == hi and bt.k_lo[j] == lo and bt.key[j] == key:
            if expiry > bt.expiry[j]:
                bt.expiry[j] = expiry
            return
        if bt.expiry[j] < bt.expiry[victim]:
            victim = j
    if bt.expiry[victim] != 0:
        bt.counters[1] += 1
    bt.k_hi[victim] = hi
    bt.k_lo[victim] = lo
    bt.key[victim] = key
    bt.expiry[victim] = expiry
    bt.counters[0] += 1


@njit(cache=True, nogil=True, _nrt=False)
def bound(bt, hi, lo, key, now):
    base = _base(bt, hi, lo, key)
    for j in range(base, base + BUCKET):
        if bt.expiry[j] >= now and bt.k_hi[j] == hi and bt.k_lo[j] == lo and bt.key[j] == key:
            return True
    return False
