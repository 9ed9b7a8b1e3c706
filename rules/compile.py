"""Compile a Policy to the arrays the match kernels read.

Every layer becomes rows of one rule table (header match, action, application and
name conditions) in the order the layer evaluates them, so one kernel walks any
layer.  Address and port sets are shared tables of inclusive ranges; a rule holds a
set id (-1: any).  Name patterns go to the FQDN table (rules.fqdn).  Every rule, and
every implicit decision (NACL `*`, default actions), has an entry in the catalog: the
kernels report catalog ids, the catalog says which layer, group and rule that was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from egressd.engine.frag import FragMode
from egressd.engine.l7 import APP_DNS, APP_HTTP, APP_QUIC, APP_TLS
from egressd.rules import fqdn
from egressd.rules.addr import ANY_ADDR
from egressd.rules.policy import (DEFAULT_OPTIONS, DomainSet, Match, Options, Origin, Pattern,
                                  Policy, Ranges, StatefulRule)

# rule actions (r_action)
A_PASS, A_DROP, A_REJECT, A_ALERT, A_FORWARD = range(1, 6)
_STATEFUL_ACTION = {"pass": A_PASS, "drop": A_DROP, "reject": A_REJECT, "alert": A_ALERT}
_STATELESS_ACTION = {"pass": A_PASS, "drop": A_DROP, "forward": A_FORWARD}
_DNS_ACTION = {"allow": A_PASS, "block": A_DROP, "alert": A_ALERT}
_APP = {None: 0, "tls": APP_TLS, "http": APP_HTTP, "dns": APP_DNS, "quic": APP_QUIC}
BUF_SNI, BUF_HOST, BUF_DNS = 1, 2, 3
_BUFFER = {"tls.sni": BUF_SNI, "http.host": BUF_HOST, "dns.query": BUF_DNS}
DNS_RESPONSES = ("nodata", "nxdomain", "override")

# layers: rule ranges in `layer_start/layer_end`
L_NACL_OUT, L_NACL_IN, L_SG_EGRESS, L_SG_INGRESS, L_DNS, L_STATELESS, L_STATEFUL = range(7)
N_LAYERS = 7

# flags (the `flags` scalar of the tables)
F_NACL, F_SG, F_STATELESS, F_EGRESS_ONLY, F_QUIC_AS_TLS, F_ORDER_STRICT = (1 << k for k in range(6))

# stateful default actions (`defaults` bits): which packets no rule decided they take.
# AWS's "drop established" and the "server-directed only" application-layer form judge
# TCP packets toward the server; the bidirectional application-layer form both ways
# (AWS, suricata-rule-evaluation-order.html and the June 2026 default-action change).
D_DROP_STRICT, D_DROP_EST, D_DROP_EST_TO_SERVER, D_ALERT_STRICT, D_ALERT_EST, \
    D_ALERT_EST_TO_SERVER = (1 << k for k in range(6))
_DEFAULT_BITS = {"drop_strict": D_DROP_STRICT, "drop_established": D_DROP_EST_TO_SERVER,
                 "drop_established_app_layer": D_DROP_EST,
                 "drop_established_app_layer_to_server": D_DROP_EST_TO_SERVER,
                 "alert_strict": D_ALERT_STRICT, "alert_established": D_ALERT_EST_TO_SERVER,
                 "alert_established_app_layer": D_ALERT_EST,
                 "alert_established_app_layer_to_server": D_ALERT_EST_TO_SERVER}
ECH_MODES = ("pass", "alert", "drop")
SNI_MODES = ("off", "alert", "drop")

# implicit decisions: fixed catalog ids
(C_NACL_OUT_DENY, C_NACL_IN_DENY, C_SG_NONE, C_STATELESS_DEFAULT, C_STATELESS_FRAG_DEFAULT,
 C_STATEFUL_DEFAULT, C_EGRESS_ONLY, C_ECH, C_SNI_RESOLUTION, C_NAME_WAIT) = range(10)


class Tables(NamedTuple):
    """What the kernels read.  Ranges are inclusive; addresses split in 64-bit halves."""

    home: np.ndarray          # address set id of home_net
    a_lo_hi: np.ndarray       # address ranges
    a_lo_lo: np.ndarray
    a_hi_hi: np.ndarray
    a_hi_lo: np.ndarray
    aset: np.ndarray          # (n_sets, 2): first, end range of each address set
    p_lo: np.ndarray          # port ranges
    p_hi: np.ndarray
    pset: np.ndarray          # (n_sets, 2)
    protos: np.ndarray        # (n_sets, 256) uint8: protocol sets
    r_proto: np.ndarray       # rule table: set ids, -1 any
    r_src: np.ndarray
    r_dst: np.ndarray
    r_sport: np.ndarray
    r_dport: np.ndarray
    r_bidir: np.ndarray
    r_tcp_flags: np.ndarray
    r_tcp_mask: np.ndarray
    r_action: np.ndarray
    r_app: np.ndarray         # engine.l7 APP_*, 0 any
    r_flowdir: np.ndarray     # 0 any, 1 to_server, 2 to_client
    r_est: np.ndarray         # 0 any, 1 established, 2 not established
    r_cond: np.ndarray        # (n_rules, 2): first, end condition
    r_resolved: np.ndarray    # domain set id of aws_route_53_resolved_domain, -1 none
    r_aux: np.ndarray         # DNS Firewall: response (DNS_RESPONSES index)
    r_qtype: np.ndarray       # (n_rules, 2): DNS Firewall query types, range in q_types; empty: any
    q_types: np.ndarray
    r_catalog: np.ndarray
    r_owned: np.ndarray       # 1: the rule row folds several rules; its set's owners say which
    r_also_alert: np.ndarray  # 1: a pass/drop rule that also logs (Suricata `alert` keyword)
    ov_off: np.ndarray        # per catalog id: DNS Firewall OVERRIDE name (wire form) in ov_blob,
    ov_len: np.ndarray        # its length (0: none) and TTL
    ov_ttl: np.ndarray
    ov_blob: np.ndarray
    c_buffer: np.ndarray      # conditions: BUF_*, domain set, negated
    c_dset: np.ndarray
    c_neg: np.ndarray
    layer: np.ndarray         # (N_LAYERS, 2): rule range of each layer
    flags: int
    defaults: int             # D_* bits
    stateless_default: int    # A_PASS / A_DROP / A_FORWARD
    stateless_frag_default: int
    ech: int                  # index in ECH_MODES
    sni_resolution: int       # index in SNI_MODES
    wait_packets: int
    wait_bytes: int


@dataclass
class CompiledPolicy:
    tables: Tables
    names: fqdn.FqdnTable
    catalog: list[Origin]
    options: Options
    frag_mode: FragMode
    resolved_sets: list[int] = field(default_factory=list)  # domain sets used by resolved-domain rules
    summary: dict = field(default_factory=dict)

    @property
    def reads_quic_names(self) -> bool:
        """Whether any decision can depend on a QUIC Initial's ClientHello (QUIC judged
        as TLS, `quic` rules, SNI-to-DNS binding): only then need Initials be decrypted."""
        t = self.tables
        return bool(t.flags & F_QUIC_AS_TLS or t.sni_resolution != 0 or (t.r_app == APP_QUIC).any())


class _Builder:
    def __init__(self) -> None:
        self.addr_ranges: list[tuple[int, int]] = []
        self.asets: dict[Ranges, int] = {}
        self.aset_rows: list[tuple[int, int]] = []
        self.port_ranges: list[tuple[int, int]] = []
        self.psets: dict[Ranges, int] = {}
        self.pset_rows: list[tuple[int, int]] = []
        self.proto_sets: dict[frozenset[int], int] = {}
        self.rules: list[dict] = []
        self.conds: list[tuple[int, int, int]] = []
        self.qtypes: list[int] = []
        self.dsets: list[list[tuple[Pattern, int]]] = []     # (pattern, owner) per set
        self.dset_ids: dict[DomainSet, int] = {}
        self.catalog: list[Origin] = []
        self.merge_key: tuple | None = None

    def aset(self, r: Ranges | None) -> int:
        if r is None or r == ANY_ADDR:
            return -1
        if r not in self.asets:
            self.asets[r] = len(self.aset_rows)
            self.aset_rows.append((len(self.addr_ranges), len(self.addr_ranges) + len(r)))
            self.addr_ranges.extend(r)
        return self.asets[r]

    def pset(self, r: Ranges | None) -> int:
        if r is None or r == ((0, 65535),):
            return -1
        if r not in self.psets:
            self.psets[r] = len(self.pset_rows)
            self.pset_rows.append((len(self.port_ranges), len(self.port_ranges) + len(r)))
            self.port_ranges.extend(r)
        return self.psets[r]

    def protos(self, s: frozenset[int] | None) -> int:
        if s is None:
            return -1
        return self.proto_sets.setdefault(s, len(self.proto_sets))

    def dset(self, d: DomainSet) -> int:
        """A set without owners (shared by every rule that names the same patterns)."""
        if d not in self.dset_ids:
            self.dset_ids[d] = len(self.dsets)
            self.dsets.append([(p, -1) for p in d.patterns])
        return self.dset_ids[d]

    def origin(self, o: Origin) -> int:
        self.catalog.append(o)
        return len(self.catalog) - 1

    def rule(self, m: Match, action: int, origin: Origin, **kw: int) -> None:
        row = dict(proto=self.protos(m.protocols), src=self.aset(m.src), dst=self.aset(m.dst),
                   sport=self.pset(m.sport), dport=self.pset(m.dport), bidir=int(m.bidirectional),
                   tcp_flags=m.tcp_flags, tcp_mask=m.tcp_mask, action=action, app=0, flowdir=0,
                   est=0, cond=(len(self.conds), len(self.conds)), resolved=-1, aux=0,
                   qtype=(len(self.qtypes), len(self.qtypes)), owned=0, also_alert=0,
                   catalog=self.origin(origin))
        row.update(kw)
        self.rules.append(row)

    def stateful(self, r: StatefulRule) -> None:
        """Add r, or fold it into the row before when the two differ only in the names
        of their one name condition (the rows AWS generates per domain of a list)."""
        key = None
        if len(r.names) == 1 and not r.names[0].negated and r.resolved is None:
            key = (r.match, r.action, r.app, r.flow_dir, r.established, r.names[0].buffer)
        if r.also_alert:
            key = None
        if key is not None and key == self.merge_key:
            owner = self.origin(r.origin)
            self.dsets[self.conds[self.rules[-1]["cond"][0]][1]].extend(
                (p, owner) for p in r.names[0].names.patterns)
            return
        self.merge_key = key
        if key is not None:
            self.rule(r.match, _STATEFUL_ACTION[r.action], r.origin, app=_APP[r.app],
                      flowdir={None: 0, "to_server": 1, "to_client": 2}[r.flow_dir],
                      est={None: 0, True: 1, False: 2}[r.established], owned=1)
            row = self.rules[-1]
            self.dsets.append([(p, row["catalog"]) for p in r.names[0].names.patterns])
            self.conds.append((_BUFFER[r.names[0].buffer], len(self.dsets) - 1, 0))
            row["cond"] = (len(self.conds) - 1, len(self.conds))
            return
        first = len(self.conds)
        for c in r.names:
            self.conds.append((_BUFFER[c.buffer], self.dset(c.names), int(c.negated)))
        self.rule(r.match, _STATEFUL_ACTION[r.action], r.origin, app=_APP[r.app],
                  flowdir={None: 0, "to_server": 1, "to_client": 2}[r.flow_dir],
                  est={None: 0, True: 1, False: 2}[r.established],
                  cond=(first, len(self.conds)),
                  resolved=self.dset(r.resolved) if r.resolved is not None else -1,
                  also_alert=int(r.also_alert))


_IMPLICIT = (
    Origin("nacl", "outbound", "*", text="network ACL implicit deny (outbound)"),
    Origin("nacl", "inbound", "*", text="network ACL implicit deny (inbound)"),
    Origin("security_group", "", "-", text="no security group rule allows the connection"),
    Origin("stateless", "", "default", text="stateless default action"),
    Origin("stateless", "", "fragment default", text="stateless default action for fragments"),
    Origin("stateful", "", "default", text="stateful default action"),
    Origin("egress_only", "", "-", text="IPv6 egress-only: connection opened from outside home_net"),
    Origin("engine", "", "ech", text="ClientHello offers Encrypted Client Hello"),
    Origin("engine", "", "sni_resolution", text="SNI not resolved to the destination address"),
    Origin("engine", "", "name_wait", text="no name within the name-wait limits"),
)

_SG_DEFAULT = Origin("security_group", "egress", "default",
                     text="default egress rule: all traffic to anywhere")
_ACTION_RANK = {"pass": 0, "drop": 1, "reject": 2, "alert": 3}


def _stateful_order(p: Policy) -> list[StatefulRule]:
    """Strict order: groups by priority, rules as written.  Action order (Suricata's
    default): pass, drop, reject, alert; then the `priority` keyword; then as written."""
    groups = sorted(enumerate(p.stateful), key=lambda g: (g[1].priority, g[0]))
    rules = [r for _, g in groups for r in g.rules]
    if p.rule_order == "strict_order":
        return rules
    return [r for _, r in sorted(enumerate(rules), key=lambda x: (_ACTION_RANK[x[1].action],
                                                                     x[1].priority, x[0]))]


def _frag_mode(action: str | None) -> FragMode:
    return {None: FragMode.REASSEMBLE, "forward": FragMode.REASSEMBLE, "pass": FragMode.PASS,
            "drop": FragMode.DROP}[action]


def compile_policy(p: Policy) -> CompiledPolicy:
    """The arrays of `p` (merged, defaults filled: see rules.load)."""
    b = _Builder()
    for o in _IMPLICIT:
        b.origin(o)
    home = p.home_net if p.home_net is not None else ()
    layers = []

    def layer(fn) -> None:
        start = len(b.rules)
        fn()
        layers.append((start, len(b.rules)))

    nacl = p.nacl or []
    layer(lambda: [b.rule(r.match, A_PASS if r.allow else A_DROP, r.origin)
                   for r in sorted(nacl, key=lambda r: r.number) if r.direction == "outbound"])
    layer(lambda: [b.rule(r.match, A_PASS if r.allow else A_DROP, r.origin)
                   for r in sorted(nacl, key=lambda r: r.number) if r.direction == "inbound"])
    # no egress list: AWS's default security group rule, all traffic out
    egress = p.sg_egress if p.sg_egress is not None else [None]
    layer(lambda: [b.rule(r.match, A_PASS, r.origin) if r else b.rule(Match(), A_PASS, _SG_DEFAULT)
                   for r in egress])
    layer(lambda: [b.rule(r.match, A_PASS, r.origin) for r in (p.sg_ingress or [])])
    layer(lambda: [b.rule(Match(), _DNS_ACTION[r.action], r.origin,
                          cond=_one_cond(b, BUF_DNS, r.domains),
                          aux=DNS_RESPONSES.index(r.response), qtype=_qtypes(b, r.qtypes))
                   for r in sorted(p.dns_firewall, key=lambda r: r.priority)])
    groups = sorted(enumerate(p.stateless), key=lambda g: (g[1].priority, g[0]))
    layer(lambda: [b.rule(r.match, _STATELESS_ACTION[r.action], r.origin)
                   for _, g in groups for r in sorted(g.rules, key=lambda r: r.priority)])
    layer(lambda: [b.stateful(r) for r in _stateful_order(p)])

    o = Options(**{k: v if v is not None else getattr(DEFAULT_OPTIONS, k)
                   for k, v in vars(p.options).items()})
    flags = 0
    if p.nacl is not None:
        flags |= F_NACL
    if p.security_group:
        flags |= F_SG
    if p.stateless or p.stateless_default not in (None, "forward"):
        flags |= F_STATELESS
    if o.ipv6_egress_only:
        flags |= F_EGRESS_ONLY
    if o.quic_as_tls:
        flags |= F_QUIC_AS_TLS
    if p.rule_order == "strict_order":
        flags |= F_ORDER_STRICT
    defaults = 0
    for d in p.stateful_defaults or ():
        defaults |= _DEFAULT_BITS[d]
    home_id = b.aset(tuple(home)) if home else -2  # -2: empty home_net, nothing is inside
    names = fqdn.build(b.dsets)
    t = _tables(b, home_id, layers, flags, defaults, p, o)
    resolved = sorted({int(x) for x in t.r_resolved if x >= 0})
    cp = CompiledPolicy(t, names, b.catalog, o, _frag_mode(p.stateless_fragment_default),
                        resolved)
    cp.summary = {"rules": {name: e - s for name, (s, e) in zip(
        ("nacl_outbound", "nacl_inbound", "sg_egress", "sg_ingress", "dns_firewall",
         "stateless", "stateful"), layers)},
        "domain_sets": len(b.dsets), "patterns": names.n_patterns,
        "address_ranges": len(b.addr_ranges), "port_ranges": len(b.port_ranges)}
    return cp


def _wire_name(name: str) -> bytes:
    """A domain name in DNS wire form (length-prefixed labels, root byte)."""
    out = b"".join(bytes([len(label)]) + label.encode("ascii")
                   for label in name.rstrip(".").split(".") if label)
    return out + b"\0"


def _overrides(catalog: list[Origin], p: Policy) -> dict[str, np.ndarray]:
    """The OVERRIDE answer of each DNS Firewall rule, by catalog id."""
    n = len(catalog)
    off, length, ttl = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    blob = bytearray()
    by_origin = {r.origin: r for r in p.dns_firewall if r.response == "override"}
    for k, o in enumerate(catalog):
        r = by_origin.get(o)
        if r is not None:
            w = _wire_name(r.override_name)
            off[k], length[k], ttl[k] = len(blob), len(w), r.override_ttl
            blob += w
    return {"ov_off": off, "ov_len": length, "ov_ttl": ttl,
            "ov_blob": np.frombuffer(bytes(blob) or b"\0", np.uint8).copy()}


def _qtypes(b: _Builder, qtypes: frozenset[int] | None) -> tuple[int, int]:
    start = len(b.qtypes)
    b.qtypes.extend(sorted(qtypes or ()))
    return (start, len(b.qtypes))


def _one_cond(b: _Builder, buf: int, d: DomainSet) -> tuple[int, int]:
    b.conds.append((buf, b.dset(d), 0))
    return (len(b.conds) - 1, len(b.conds))


def _tables(b: _Builder, home_id: int, layers: list[tuple[int, int]], flags: int,
            defaults: int, p: Policy, o: Options) -> Tables:
    def col(name: str, dtype) -> np.ndarray:
        return np.array([r[name] for r in b.rules], dtype=dtype)

    ar = b.addr_ranges or [(0, 0)]
    protos = np.zeros((max(len(b.proto_sets), 1), 256), np.uint8)
    for s, k in b.proto_sets.items():
        protos[k, list(s)] = 1
    m64 = (1 << 64) - 1
    return Tables(
        home=np.array([home_id], np.int64),
        a_lo_hi=np.array([lo >> 64 for lo, _ in ar], np.uint64),
        a_lo_lo=np.array([lo & m64 for lo, _ in ar], np.uint64),
        a_hi_hi=np.array([hi >> 64 for _, hi in ar], np.uint64),
        a_hi_lo=np.array([hi & m64 for _, hi in ar], np.uint64),
        aset=np.array(b.aset_rows or [(0, 0)], np.int64).reshape(-1, 2),
        p_lo=np.array([lo for lo, _ in b.port_ranges] or [0], np.int64),
        p_hi=np.array([hi for _, hi in b.port_ranges] or [0], np.int64),
        pset=np.array(b.pset_rows or [(0, 0)], np.int64).reshape(-1, 2),
        protos=protos,
        r_proto=col("proto", np.int64), r_src=col("src", np.int64), r_dst=col("dst", np.int64),
        r_sport=col("sport", np.int64), r_dport=col("dport", np.int64),
        r_bidir=col("bidir", np.uint8), r_tcp_flags=col("tcp_flags", np.uint8),
        r_tcp_mask=col("tcp_mask", np.uint8), r_action=col("action", np.uint8),
        r_app=col("app", np.uint8), r_flowdir=col("flowdir", np.uint8), r_est=col("est", np.uint8),
        r_cond=np.array([r["cond"] for r in b.rules] or [(0, 0)], np.int64).reshape(-1, 2)[:len(b.rules)],
        r_resolved=col("resolved", np.int64), r_aux=col("aux", np.uint8),
        r_qtype=np.array([r["qtype"] for r in b.rules] or [(0, 0)], np.int64).reshape(-1, 2)[:len(b.rules)],
        q_types=np.array(b.qtypes, np.int64),
        r_catalog=col("catalog", np.int64), r_owned=col("owned", np.uint8),
        r_also_alert=col("also_alert", np.uint8),
        c_buffer=np.array([c[0] for c in b.conds], np.uint8),
        c_dset=np.array([c[1] for c in b.conds], np.int64),
        c_neg=np.array([c[2] for c in b.conds], np.uint8),
        layer=np.array(layers, np.int64),
        **_overrides(b.catalog, p),
        flags=flags, defaults=defaults,
        stateless_default=_STATELESS_ACTION[p.stateless_default or "forward"],
        stateless_frag_default=_STATELESS_ACTION[p.stateless_fragment_default or "forward"],
        ech=ECH_MODES.index(o.ech), sni_resolution=SNI_MODES.index(o.sni_resolution),
        wait_packets=o.name_wait_packets, wait_bytes=o.name_wait_bytes,
    )
