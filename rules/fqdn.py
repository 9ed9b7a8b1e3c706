"""The FQDN table: which domain sets a name belongs to, in one pass over the name.

Exact and domain patterns (AWS `abc.example.com`, `.example.com`) are keyed by a hash
of the pattern; a name is looked up once per label boundary, its suffix hashes coming
from one right-to-left pass (FNV-1a over the reversed bytes, so the hash of every
suffix is a prefix of the pass).  The open-addressing slots hold the hashes
themselves, so a probe that finds nothing (most label boundaries) costs one cache line,
and an entry's fields sit together in one row.  A hash hit is only a candidate: the bytes are
compared, so no collision can make a name match a pattern it does not equal.  The
rarer Suricata forms (byte suffix, prefix, substring) are checked one by one.

A lookup marks every matching set with the caller's generation number, so the hits
array is never cleared, and notes per set the lowest owner of a matching pattern: the
compiler merges a run of rules that differ only in their names (AWS generates one rule
per domain of a list) into one set whose patterns are owned by the rules they came
from, so that a list of 100,000 domains is one lookup and still reports its rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from egressd.rules.policy import CONTAINS, DOMAIN, EXACT, PREFIX, SUBDOMAIN, SUFFIX, Pattern

K_EXACT, K_DOMAIN, K_SUBDOMAIN, K_SUFFIX, K_PREFIX, K_CONTAINS = range(6)
_KIND = {EXACT: K_EXACT, DOMAIN: K_DOMAIN, SUBDOMAIN: K_SUBDOMAIN, SUFFIX: K_SUFFIX,
         PREFIX: K_PREFIX, CONTAINS: K_CONTAINS}
_HASHED = (K_EXACT, K_DOMAIN, K_SUBDOMAIN)

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _slot(h, mask):
    x = h ^ (h >> np.uint64(31))
    x *= np.uint64(0x9E3779B97F4A7C15)
    return np.int64((x >> np.uint64(17)) & mask)


@njit(cache=True, nogil=True, _nrt=False)
def reverse_hash(b, off, n):
    """FNV-1a of b[off:off+n] read from the last byte to the first."""
    h = _FNV_OFFSET
    for k in range(n - 1, -1, -1):
        h = (h ^ np.uint64(b[np.uintp(off + k)])) * _FNV_PRIME
    return h


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _equal(a, ao, b, bo, n):
    for k in range(n):
        if a[np.uintp(ao + k)] != b[np.uintp(bo + k)]:
            return False
    return True


@njit(cache=True, nogil=True, _nrt=False)
def _hit(hits, owners, d, owner, gen):
    if hits[d] != gen:
        hits[d] = gen
        owners[d] = owner
    elif owner < owners[d]:
        owners[d] = owner


@njit(cache=True, nogil=True, _nrt=False)
def lookup(name, off, n, slots, ents, o_off, o_len, o_kind, o_dset, o_owner, blob, hits, owners,
           gen):
    """Mark hits[set] = gen for every set name[off:off+n] belongs to, owners[set] = the
    lowest owner of its matching patterns; returns how many patterns matched."""
    found = 0
    mask = np.uint64(slots.shape[0] - 1)
    h = _FNV_OFFSET
    for k in range(n - 1, -1, -1):
        h = (h ^ np.uint64(name[np.uintp(off + k)])) * _FNV_PRIME
        if k > 0 and name[np.uintp(off + k - 1)] != 0x2E:
            continue
        j = _slot(h, mask)
        hs = np.int64(h)
        for _ in range(slots.shape[0]):  # linear probing, at most half full: ends at a hole
            e = slots[j, 1]
            if e < 0:
                break
            if slots[j, 0] == hs:
                kind = ents[e, 2]
                ok = (kind == K_DOMAIN) or (kind == K_EXACT and k == 0) or (kind == K_SUBDOMAIN and k > 0)
                if ok and ents[e, 1] == n - k and _equal(blob, ents[e, 0], name, off + k, n - k):
                    _hit(hits, owners, ents[e, 3], ents[e, 4], gen)
                    found += 1
            j = (j + 1) & np.int64(mask)
    for j in range(o_kind.shape[0]):
        ln = o_len[j]
        if ln > n:
            continue
        kind = o_kind[j]
        ok = False
        if kind == K_SUFFIX:
            ok = _equal(blob, o_off[j], name, off + n - ln, ln)
        elif kind == K_PREFIX:
            ok = _equal(blob, o_off[j], name, off, ln)
        else:
            for s in range(n - ln + 1):
                if _equal(blob, o_off[j], name, off + s, ln):
                    ok = True
                    break
        if ok:
            _hit(hits, owners, o_dset[j], o_owner[j], gen)
            found += 1
    return found


@dataclass
class FqdnTable:
    slots: np.ndarray     # (size, 2): hash (as int64), entry; entry -1: empty
    ents: np.ndarray      # (entries, 5): blob offset, length, kind, set, owner
    o_off: np.ndarray
    o_len: np.ndarray
    o_kind: np.ndarray
    o_dset: np.ndarray
    o_owner: np.ndarray
    blob: np.ndarray
    n_sets: int
    n_patterns: int

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.slots, self.ents, self.o_off, self.o_len, self.o_kind, self.o_dset,
                self.o_owner, self.blob)

    def sets_of(self, name: bytes) -> dict[int, int]:
        """{set: lowest owner of a matching pattern} for a (normalized) name."""
        hits = np.zeros(max(self.n_sets, 1), np.int64)
        owners = np.zeros(max(self.n_sets, 1), np.int64)
        src = np.frombuffer(name, np.uint8)
        lookup(src, 0, len(src), *self.arrays(), hits, owners, 1)
        return {int(k): int(owners[k]) for k in np.flatnonzero(hits == 1)}


def build(sets: list[list[tuple[Pattern, int]]]) -> FqdnTable:
    """The table for `sets`: set k holds the (pattern, owner) pairs sets[k]."""
    blob = bytearray()
    hashed: list[tuple[int, int, int, int, int, int]] = []   # hash, off, len, kind, set, owner
    other: list[tuple[int, int, int, int, int]] = []
    seen: set[tuple[bytes, int, int]] = set()
    for k, pairs in enumerate(sets):
        for p, owner in pairs:
            kind = _KIND.get(p.kind)
            if kind is None:
                raise ValueError(f"unknown name pattern kind {p.kind!r}")
            if (p.value, kind, k) in seen:  # the first owner is the lowest: rules in order
                continue
            seen.add((p.value, kind, k))
            off = len(blob)
            blob += p.value
            if kind in _HASHED:
                h = int(reverse_hash(np.frombuffer(p.value or b"\0", np.uint8), 0, len(p.value)))
                hashed.append((h, off, len(p.value), kind, k, owner))
            else:
                other.append((off, len(p.value), kind, k, owner))
    size = 1
    while size < 2 * max(len(hashed), 1):
        size <<= 1
    slots = np.full((size, 2), -1, np.int64)
    mask = np.uint64(size - 1)
    for e, (h, *_rest) in enumerate(hashed):
        j = _slot(np.uint64(h), mask)
        while slots[j, 1] >= 0:
            j = (j + 1) & (size - 1)
        slots[j] = (np.uint64(h).view(np.int64), e)

    def col(rows, i, dtype):
        return np.array([r[i] for r in rows], dtype)

    return FqdnTable(
        slots=slots, ents=np.array([r[1:] for r in hashed], np.int64).reshape(-1, 5),
        o_off=col(other, 0, np.int64), o_len=col(other, 1, np.int64),
        o_kind=col(other, 2, np.uint8), o_dset=col(other, 3, np.int64),
        o_owner=col(other, 4, np.int64),
        blob=np.frombuffer(bytes(blob) or b"\0", np.uint8).copy(),
        n_sets=len(sets), n_patterns=len(hashed) + len(other))
