"""Route 53 Resolver DNS Firewall domain lists: one domain specification per line.

What AWS documents (https://docs.aws.amazon.com/Route53/latest/APIReference/API_route53resolver_ImportFirewallDomains.html
and https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/resolver-dns-firewall-user-managed-domain-lists.html):
the import file "must be a text file and must contain a single domain per line"; each
specification "can optionally start with * (asterisk)", otherwise holds only A-Z, a-z,
0-9, hyphen and the period between labels, and is 1-255 characters long.

What AWS does not spell out there, and how egressd reads it:
- a plain name (`example.com`) matches that name only: the optional `*` exists to reach
  subdomains, so a plain entry that already did would make it pointless;
- `*.example.com` matches the names below example.com and not example.com itself, the
  wildcard meaning DNS gives a leading `*` label (RFC 4592 section 2.1.1); list the apex
  as its own line to match it too;
- `*` alone matches every name (a catch-all, as in "block everything not allowed by an
  earlier rule").
No other `*` placement is accepted.  Blank lines and lines starting with `#` are skipped
(an egressd convenience: AWS's import takes domains only, so strip them before uploading).
"""
from __future__ import annotations

import os
import re

from egressd.rules.domains import check_domain, normalize
from egressd.rules.policy import (
    EXACT, SUBDOMAIN, SUFFIX, DnsRule, DomainSet, Origin, Pattern, Policy, PolicyError,
)

MAX_SPEC = 255                       # AWS: "It must be from 1-255 characters in length"
_SPEC = re.compile(r"(\*|(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?)")


def pattern(spec: str) -> Pattern:
    """One DNS Firewall domain specification as a name pattern.  Raises ValueError."""
    s = spec.strip()
    if not s or len(s) > MAX_SPEC or not _SPEC.fullmatch(s):
        raise ValueError(f"{spec!r} is not a DNS Firewall domain: use letters, digits, "
                         "hyphens and dots, optionally starting with '*.' (or '*' alone)")
    if s == "*":
        return Pattern(SUFFIX, b"")          # every name ends with the empty string
    name = s.removeprefix("*.")
    why = check_domain(name.removesuffix("."))
    if why:
        raise ValueError(f"{spec!r}: {why}")
    if s.startswith("*."):
        # subdomains only: the name must end with ".example.com", so the apex and
        # look-alikes such as badexample.com do not match
        return Pattern(SUBDOMAIN, normalize(name))
    return Pattern(EXACT, normalize(name))


def _entries(text: str):
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            yield n, s


def parse_domain_list(text: str, file: str) -> DomainSet:
    """The patterns of a domain list file; a bad line is a PolicyError naming it."""
    pats: list[Pattern] = []
    seen: set[Pattern] = set()
    for n, s in _entries(text):
        try:
            p = pattern(s)
        except ValueError as e:
            raise PolicyError(file, f"line {n}", str(e)) from None
        if p not in seen:
            seen.add(p)
            pats.append(p)
    if not pats:
        raise PolicyError(file, "", "the domain list holds no domains")
    return DomainSet(tuple(pats))


def looks_like_domain_list(text: str) -> bool:
    """Most entry lines are single DNS Firewall domain specifications: a list with a few
    bad lines is still a list, so that parse_domain_list names the bad line."""
    good = bad = 0
    for _, s in _entries(text):
        if len(s) <= MAX_SPEC and _SPEC.fullmatch(s):
            good += 1
        else:
            bad += 1
    return good > 0 and good >= 2 * bad


def load_list(text: str, file: str) -> Policy:
    """A domain list given directly as --policy: one DNS Firewall rule that blocks the
    listed names with NODATA (AWS's default block response).  Alone it is the only rule;
    merged with other files (rules.load.load_policies) it is placed after every rule
    they define, so explicit ALLOW rules keep precedence."""
    domains = parse_domain_list(text, file)
    name = os.path.basename(file)
    rule = DnsRule(priority=1, domains=domains, action="block", response="nodata",
                   origin=Origin("dns_firewall", name, "list", file, None,
                                 f"block {len(domains.patterns)} domains from {name} (NODATA)"))
    return Policy(sources=[file], dns_firewall=[rule])
