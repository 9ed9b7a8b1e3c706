"""The compiled FQDN table (rules.fqdn) against the obvious matcher (rules.domains).

Random pattern sets of every kind and random names built from the same labels (so
that near misses are common: `badexample.com` against `.example.com`, a pattern's
own suffix, the apex) must give exactly the sets the reference gives.  AWS's
documented examples are checked by name.  EGRESSD_FUZZ_SCALE scales the examples.
"""
from __future__ import annotations

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.rules import domains, fqdn
from egressd.rules.policy import CONTAINS, DOMAIN, EXACT, PREFIX, SUBDOMAIN, SUFFIX, DomainSet, Pattern

SCALE = float(os.environ.get("EGRESSD_FUZZ_SCALE", "1"))
LABELS = ["example", "com", "badexample", "www", "a", "b-c", "xn--bcher-kva", "co", "uk", "e"]
KINDS = [EXACT, DOMAIN, SUBDOMAIN, SUFFIX, PREFIX, CONTAINS]

names = st.lists(st.sampled_from(LABELS), min_size=1, max_size=5).map(lambda ls: ".".join(ls).encode())
fragments = st.one_of(names, names.map(lambda n: n[1:]), names.map(lambda n: n[:-1]))
patterns = st.builds(Pattern, st.sampled_from(KINDS), fragments)
sets = st.lists(st.lists(patterns, min_size=1, max_size=4).map(lambda ps: DomainSet(tuple(ps))),
                min_size=1, max_size=6)


@settings(max_examples=int(400 * SCALE), deadline=None)
@given(sets, st.lists(names, min_size=1, max_size=8))
def test_table_equals_reference(dsets: list[DomainSet], queries: list[bytes]) -> None:
    table = fqdn.build([[(p, -1) for p in ds.patterns] for ds in dsets])
    for name in queries:
        want = {k for k, ds in enumerate(dsets) if domains.set_matches(ds, name)}
        assert set(table.sets_of(name)) == want, name


def test_aws_wildcard_rules() -> None:
    """AWS Network Firewall domain lists: `abc.example.com` matches only itself;
    `.example.com` matches example.com and every subdomain
    (docs.aws.amazon.com/network-firewall/latest/APIReference/API_RulesSourceList.html)."""
    exact, wild = (DomainSet((domains.aws_target(t),)) for t in ("abc.example.com", ".example.com"))
    table = fqdn.build([[(p, -1) for p in ds.patterns] for ds in (exact, wild)])
    cases = {b"abc.example.com": {0, 1}, b"example.com": {1}, b"www.abc.example.com": {1},
             b"badexample.com": set(), b"example.com.evil.net": set(), b"com": set(),
             b"xabc.example.com": {1}}
    for name, want in cases.items():
        assert set(table.sets_of(name)) == want, name


def test_many_patterns_one_set_report_their_owner() -> None:
    """10,000 patterns in one set (a domain list AWS turns into one rule per domain, folded
    into one row): every one found with its own owner, none of their near misses."""
    pats = [f"host{k}.example.com".encode() for k in range(10_000)]
    table = fqdn.build([[(Pattern(EXACT, p), 100 + k) for k, p in enumerate(pats)]])
    assert table.slots.shape[0] >= 2 * len(pats)
    for k in range(0, 10_000, 97):
        assert table.sets_of(pats[k]) == {0: 100 + k}
        assert table.sets_of(b"x" + pats[k]) == {}
        assert table.sets_of(pats[k][:-1]) == {}


def test_lowest_owner_wins() -> None:
    """Two rules of a folded run match: the earlier (lower catalog id) decides."""
    table = fqdn.build([[(Pattern(DOMAIN, b"example.com"), 9), (Pattern(EXACT, b"www.example.com"), 4),
                         (Pattern(SUFFIX, b"ample.com"), 7)]])
    assert table.sets_of(b"www.example.com") == {0: 4}
    assert table.sets_of(b"a.example.com") == {0: 7}
    assert table.sets_of(b"sample.com") == {0: 7}


def test_hash_hit_needs_equal_bytes() -> None:
    """A candidate whose hash matches but whose bytes differ never matches: corrupt the
    stored pattern bytes (hash left as built) and the name stops matching."""
    table = fqdn.build([[(Pattern(EXACT, b"allowed.example"), -1)]])
    assert table.sets_of(b"allowed.example") == {0: -1}
    table.blob[0] ^= 0x20
    assert table.sets_of(b"allowed.example") == {}


def test_lookup_reads_only_the_name() -> None:
    """The name is read at its offset in a larger buffer (the names arena), no further."""
    table = fqdn.build([[(Pattern(SUFFIX, b"ample.com"), -1)], [(Pattern(CONTAINS, b"q"), -1)]])
    buf = np.frombuffer(b"qqqqexample.comqqqq", np.uint8)
    hits = np.zeros(2, np.int64)
    owners = np.zeros(2, np.int64)
    fqdn.lookup(buf, 4, 11, *table.arrays(), hits, owners, 7)
    assert list(hits) == [7, 0]
