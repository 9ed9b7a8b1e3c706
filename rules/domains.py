"""Domain names and patterns: normalization, validation, and the obvious matcher.

Names compare as egressd stores them (engine.l7): ASCII lower case, one trailing dot
removed, IDNA as the bytes on the wire.  `matches` is the reference the compiled FQDN
table is tested against.
"""
from __future__ import annotations

from egressd.rules.policy import (CONTAINS, DOMAIN, EXACT, PREFIX, SUBDOMAIN, SUFFIX, DomainSet,
                                  Pattern)

MAX_NAME = 253


def normalize(name: str | bytes) -> bytes:
    """Lower case (ASCII only, as the engine folds), one trailing dot removed."""
    b = name.encode("ascii") if isinstance(name, str) else bytes(name)
    b = bytes(c + 32 if 65 <= c <= 90 else c for c in b)
    return b[:-1] if b.endswith(b".") else b


def check_domain(text: str) -> str | None:
    """Why `text` is not a usable domain name, or None."""
    try:
        text.encode("ascii")
    except UnicodeEncodeError:
        return "not ASCII (write internationalized names in their xn-- form)"
    if not text:
        return "empty"
    if len(text) > MAX_NAME:
        return f"longer than {MAX_NAME} characters"
    if any(c.isspace() for c in text):
        return "contains white space"
    labels = text.split(".")
    if any(not label for label in labels):
        return "empty label (two dots in a row, or a leading dot where none is allowed)"
    if any(len(label) > 63 for label in labels):
        return "a label longer than 63 characters"
    return None


def aws_target(text: str) -> Pattern:
    """An AWS Network Firewall domain list target: `.example.com` is example.com and its
    subdomains, anything else one exact name.  Raises ValueError with the reason."""
    t = text.strip()
    if t.endswith(".") and len(t) > 1:
        t = t[:-1]
    wildcard = t.startswith(".")
    why = check_domain(t[1:] if wildcard else t)
    if why:
        raise ValueError(f"domain {text!r}: {why}")
    return Pattern(DOMAIN if wildcard else EXACT, normalize(t[1:] if wildcard else t))


def matches(pattern: Pattern, name: bytes) -> bool:
    """Reference matcher: `name` already normalized."""
    v = pattern.value
    if pattern.kind == EXACT:
        return name == v
    if pattern.kind == DOMAIN:
        return name == v or name.endswith(b"." + v)
    if pattern.kind == SUBDOMAIN:
        return name.endswith(b"." + v)
    if pattern.kind == SUFFIX:
        return name.endswith(v)
    if pattern.kind == PREFIX:
        return name.startswith(v)
    if pattern.kind == CONTAINS:
        return v in name
    raise ValueError(pattern.kind)


def set_matches(ds: DomainSet, name: bytes) -> bool:
    return any(matches(p, name) for p in ds.patterns)
