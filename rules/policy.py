"""The policy every loader produces and the compiler consumes.

Loaders (YAML, AWS Network Firewall JSON, Suricata rules, DNS Firewall domain lists)
differ in syntax only: each turns its file into a `Policy` of the layers below, with
every address and port set already resolved to sorted, disjoint, inclusive ranges
(negations and variables applied), and every name pattern normalized.  `merge`
combines several files in the order the seed layers them.

Addresses are 128-bit integers, IPv4 mapped into ::ffff:0:0/96 (as the packet batch
holds them), so one range table serves both families.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Ranges = tuple[tuple[int, int], ...]   # sorted, disjoint, inclusive (lo, hi)

# name patterns: how a pattern's bytes must meet a name (both lower case, no trailing dot)
EXACT = "exact"      # the name is the pattern
DOMAIN = "domain"    # the name is the pattern or ends with "." + pattern (AWS ".example.com")
SUBDOMAIN = "subdomain"  # the name ends with "." + pattern (DNS Firewall "*.example.com")
SUFFIX = "suffix"    # the name ends with the bytes (Suricata endswith, no dotprefix)
PREFIX = "prefix"    # the name starts with the bytes (startswith)
CONTAINS = "contains"
PatternKind = Literal["exact", "domain", "subdomain", "suffix", "prefix", "contains"]

StatelessAction = Literal["pass", "drop", "forward"]
StatefulAction = Literal["pass", "drop", "reject", "alert"]
App = Literal["tls", "http", "dns", "quic"]
Buffer = Literal["tls.sni", "http.host", "dns.query"]
LAYERS = ("nacl", "egress_only", "security_group", "dns_firewall", "stateless", "stateful",
          "engine")


@dataclass(frozen=True)
class Origin:
    """Where a rule came from: the catalog entry `explain` and the stats show."""

    layer: str                  # one of LAYERS
    group: str                  # rule group / list name ("" if none)
    ident: str                  # sid, rule number or priority, as the user wrote it
    file: str = ""
    line: int | None = None
    text: str = ""              # the rule as written (or a short description)


@dataclass(frozen=True)
class Pattern:
    kind: PatternKind
    value: bytes                # lower case, trailing dot removed (EXACT / DOMAIN)


@dataclass(frozen=True)
class DomainSet:
    """Names matched by any of the patterns."""

    patterns: tuple[Pattern, ...]


@dataclass(frozen=True)
class Match:
    """A packet header match; None means any.  `src`/`dst`/`sport`/`dport` as written
    in the rule's direction; `bidirectional` (Suricata `<>`) also tries them swapped."""

    protocols: frozenset[int] | None = None
    src: Ranges | None = None
    dst: Ranges | None = None
    sport: Ranges | None = None
    dport: Ranges | None = None
    tcp_flags: int = 0          # with tcp_mask: (flags & mask) == tcp_flags
    tcp_mask: int = 0
    bidirectional: bool = False


@dataclass(frozen=True)
class NaclRule:
    """Network ACL entry.  Outbound entries judge packets leaving home_net (cidr vs
    destination), inbound entries packets entering it (cidr vs source); ports are
    destination ports."""

    number: int
    direction: Literal["outbound", "inbound"]
    allow: bool
    match: Match
    origin: Origin


@dataclass(frozen=True)
class SgRule:
    """Security group rule: egress judges connections home_net opens (cidr vs the
    responder), ingress connections opened toward home_net (cidr vs the initiator);
    ports are the responder's."""

    direction: Literal["egress", "ingress"]
    match: Match
    origin: Origin


@dataclass(frozen=True)
class DnsRule:
    """Route 53 Resolver DNS Firewall rule (lowest priority first)."""

    priority: int
    domains: DomainSet
    action: Literal["allow", "block", "alert"]
    response: Literal["nodata", "nxdomain", "override"] = "nodata"
    override_name: str = ""
    override_ttl: int = 0
    qtypes: frozenset[int] | None = None
    origin: Origin = field(default_factory=lambda: Origin("dns_firewall", "", ""))


@dataclass(frozen=True)
class StatelessRule:
    priority: int
    match: Match
    action: StatelessAction
    origin: Origin


@dataclass(frozen=True)
class NameCond:
    """The flow's name in `buffer` matches one of `names` (negated: matches none)."""

    buffer: Buffer
    names: DomainSet
    negated: bool = False


@dataclass(frozen=True)
class StatefulRule:
    """A Suricata-style stateful rule (also what domain lists and 5-tuple rules become).

    `app` is the header's application protocol (tls/http/dns/quic) or None for
    ip/tcp/udp/icmp; `flow_dir` and `established` are the `flow` keyword's options;
    `names` are ANDed; `resolved` is `aws_route_53_resolved_domain`."""

    action: StatefulAction
    match: Match
    origin: Origin
    app: App | None = None
    flow_dir: Literal["to_server", "to_client"] | None = None
    established: bool | None = None
    names: tuple[NameCond, ...] = ()
    resolved: DomainSet | None = None
    priority: int = 3           # Suricata `priority` keyword (1 first); orders action order
    also_alert: bool = False    # Suricata `alert` keyword: a pass or drop rule that also logs
    sid: int = 0
    rev: int = 1
    msg: str = ""


@dataclass
class StatelessGroup:
    name: str
    priority: int               # lower first; rules inside by their own priority
    rules: list[StatelessRule]
    arn: str = ""


@dataclass
class StatefulGroup:
    name: str
    priority: int               # strict order: lower first
    rules: list[StatefulRule]
    arn: str = ""
    rule_order: Literal["default_action_order", "strict_order"] | None = None


@dataclass(frozen=True)
class Reference:
    """A firewall policy's reference to a rule group by ARN, resolved at merge from
    the rule group files given alongside."""

    arn: str
    kind: Literal["stateless", "stateful"]
    priority: int
    file: str


@dataclass
class Variables:
    """Suricata rule variables: IP sets ($HOME_NET, ...) and port sets ($HTTP_PORTS)."""

    ip_sets: dict[str, Ranges] = field(default_factory=dict)
    port_sets: dict[str, Ranges] = field(default_factory=dict)


# AWS's stateful default actions (API FirewallPolicy.StatefulDefaultActions, without
# "aws:"); the app_layer ones are the newer "Application drop established" (bidirectional)
# and its "server-directed only" form (the default of new AWS policies since June 2026)
STATEFUL_DEFAULTS = ("drop_strict", "drop_established", "drop_established_app_layer",
                     "drop_established_app_layer_to_server", "alert_strict", "alert_established",
                     "alert_established_app_layer", "alert_established_app_layer_to_server")


@dataclass
class Options:
    """Engine settings (YAML `engine:`); None means "not set here" until merge."""

    name_wait_packets: int | None = None   # client data packets a flow may send before its name
    name_wait_bytes: int | None = None     # ... and bytes
    ech: Literal["pass", "alert", "drop"] | None = None
    sni_resolution: Literal["off", "alert", "drop"] | None = None
    quic_as_tls: bool | None = None        # tls.sni rules and TLS_SNI lists also judge QUIC
    ipv6_egress_only: bool | None = None
    resolved_domain_ttl_max: int | None = None   # seconds a learned answer is trusted at most
    binding_capacity: int | None = None          # resolved (address, name) pairs kept


DEFAULT_OPTIONS = Options(name_wait_packets=32, name_wait_bytes=32768, ech="pass",
                          sni_resolution="off", quic_as_tls=False, ipv6_egress_only=False,
                          resolved_domain_ttl_max=86400, binding_capacity=1 << 18)


@dataclass
class Policy:
    """One file's worth of policy, or several merged.  A layer left None is off."""

    sources: list[str] = field(default_factory=list)
    home_net: Ranges | None = None
    nacl: list[NaclRule] | None = None
    sg_egress: list[SgRule] | None = None       # None: allow all egress (AWS default)
    sg_ingress: list[SgRule] | None = None
    security_group: bool = False                # the layer is on
    dns_firewall: list[DnsRule] = field(default_factory=list)
    stateless: list[StatelessGroup] = field(default_factory=list)
    stateless_default: StatelessAction | None = None
    stateless_fragment_default: StatelessAction | None = None
    stateful: list[StatefulGroup] = field(default_factory=list)
    rule_order: Literal["default_action_order", "strict_order"] | None = None
    stateful_defaults: tuple[str, ...] | None = None
    options: Options = field(default_factory=Options)
    references: list[Reference] = field(default_factory=list)


class PolicyError(ValueError):
    """A policy that cannot be loaded: `str()` names the file, the line or field, the reason."""

    def __init__(self, file: str, where: str, reason: str) -> None:
        self.file, self.where, self.reason = file, where, reason
        super().__init__(f"{file}: {where}: {reason}" if where else f"{file}: {reason}")
