"""The YAML policy file of DESIGN.md ("Policy"): a pydantic model and its conversion to
a `policy.Policy`.

```yaml
version: 1                       # required; the only version there is
home_net: [10.0.0.0/8]           # absent: RFC 1918 (10/8, 172.16/12, 192.168/16) + fc00::/7
nacl:                            # present: the layer is on, AWS's `*` deny after the last rule
  outbound: [{rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 443}]
  inbound:  [{rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 1024-65535}]
security_group:                  # present: the layer is on
  egress:  [{protocol: tcp, cidr: 0.0.0.0/0, ports: 443}]   # absent: allow all (default SG)
  ingress: []                                               # absent: none
dns_firewall:
  rules:
    - {priority: 100, domains: [c2.example.net], action: block, response: nxdomain}
    - {priority: 200, domain_list_file: allowed.txt, action: allow, query_types: [A, AAAA]}
network_firewall:
  rule_order: strict_order       # or default_action_order (AWS's default)
  stateful_default_actions: [drop_established]     # strict_order only
  stateless_default_actions: forward               # pass | drop | forward (default)
  stateless_fragment_default_actions: forward
  stateless_rule_groups:
    - priority: 10
      rules: [{priority: 1, action: drop, protocols: [udp], destination_ports: [53],
               destinations: [0.0.0.0/0]}]
  rule_groups:                   # each one of the four sources; priority: strict order
    - domain_list: {targets: [.pkgs.example], target_types: [tls_sni, http_host], type: allowlist}
    - suricata: |
        drop tls $HOME_NET any -> any any (tls.sni; content:"bad.example"; sid:1;)
    - suricata_file: egress.rules
    - aws_rule_group_file: egress-rulegroup.json      # describe-rule-group output
engine: {name_wait_packets: 8, ech: alert, sni_resolution: alert, quic_as_tls: true}
```

Unknown keys are errors everywhere, so a typo never silently drops a rule.  Relative
file names are read from the YAML file's folder.  Errors name the line and the field
path (`line 12, nacl.outbound[1].ports`).  A firewall policy JSON is not accepted as a
rule group here: it is a whole network_firewall layer, so it is given as its own
--policy (see rules.load).  Settings left out stay unset (None) until rules.load fills
AWS's defaults, so several files can be merged.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
)

from egressd.rules import addr, aws, dnsfw, domains, suricata
from egressd.rules.policy import (
    STATEFUL_DEFAULTS, DnsRule, DomainSet, Match, NaclRule, Options, Origin, Policy,
    PolicyError, Ranges, SgRule, StatefulGroup, StatelessGroup, StatelessRule, Variables,
)

FieldPath = tuple[str | int, ...]

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
PORTED = (6, 17)
# Route 53 Resolver DNS Firewall query types (Qtype); "TYPEnnn" names any other by number.
# https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/resolver-dns-firewall-rule-settings.html
QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
          "SRV": 33, "NAPTR": 35, "DS": 43, "SPF": 99, "CAA": 257}
QTYPE_MAX = 65334          # AWS: "TYPENUMBER, where the NUMBER can be 1-65334"
# https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_TCPFlagField.html
TCP_FLAGS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20,
             "ECE": 0x40, "CWR": 0x80}


# --- leaf values: checked and converted in one place, so errors carry the item's path


def _version(v: Any) -> int:
    if isinstance(v, bool) or v != 1:
        raise ValueError(f"version {v!r} is not supported; this egressd reads version: 1")
    return 1


# pydantic turns ValueError (not TypeError) into a validation error with the field's path
def _text(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not {what}")
    return v


def _cidr(v: Any) -> Ranges:
    return addr.cidr_set(_text(v, "a CIDR block"))


def _ports(v: Any) -> tuple[int, int]:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"{v!r} is not a port or port range (write 443 or \"1024-65535\")")
    return addr.port_range(v)


def _protocol(v: Any) -> int | None:
    """A protocol name or number; None is every protocol (`all`, AWS's -1)."""
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("all", "-1"):
            return None
        if s in PROTOCOL_NUMBERS:
            return PROTOCOL_NUMBERS[s]
        if s.isdigit():
            v = int(s)
    if isinstance(v, int) and not isinstance(v, bool):
        if v == -1:
            return None
        if 0 <= v <= 255:
            return v
    raise ValueError(f"{v!r} is not a protocol: use tcp, udp, icmp, icmpv6, all (-1) "
                     "or a number 0-255")


def _ip_protocol(v: Any) -> int:
    p = _protocol(v)
    if p is None:
        raise ValueError("leave protocols out to match every protocol")
    return p


def _aws_target(v: Any) -> str:
    domains.aws_target(_text(v, "a domain"))      # raises ValueError with the reason
    return v


def _dns_domain(v: Any) -> Any:
    return dnsfw.pattern(_text(v, "a domain"))


def _qtype(v: Any) -> int:
    s = _text(v, "a DNS query type").strip().upper()
    if s in QTYPES:
        return QTYPES[s]
    if s.startswith("TYPE") and s[4:].isdigit() and 1 <= int(s[4:]) <= QTYPE_MAX:
        return int(s[4:])
    raise ValueError(f"{v!r} is not a DNS Firewall query type: use {', '.join(QTYPES)} "
                     f"or TYPEnnn (1-{QTYPE_MAX})")


def _tcp_flag(v: Any) -> int:
    s = _text(v, "a TCP flag").strip().upper()
    if s not in TCP_FLAGS:
        raise ValueError(f"{v!r} is not a TCP flag: use {', '.join(TCP_FLAGS)}")
    return TCP_FLAGS[s]


def _yaml_off(v: Any) -> Any:
    # YAML 1.1 reads a bare `off` as false
    return "off" if v is False else v


Version = Annotated[Any, AfterValidator(_version)]
Cidr = Annotated[Any, AfterValidator(_cidr)]
Ports = Annotated[Any, AfterValidator(_ports)]
Protocol = Annotated[Any, AfterValidator(_protocol)]
IpProtocol = Annotated[Any, AfterValidator(_ip_protocol)]
AwsTarget = Annotated[Any, AfterValidator(_aws_target)]
DnsDomain = Annotated[Any, AfterValidator(_dns_domain)]
QType = Annotated[Any, AfterValidator(_qtype)]
TcpFlag = Annotated[Any, AfterValidator(_tcp_flag)]
StatelessActionName = Literal["pass", "drop", "forward"]
Priority = Annotated[int, Field(ge=1)]
# https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_StatelessRule.html
StatelessPriority = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NaclRuleModel(_Model):
    # "Positive integer from 1 to 32766"
    # https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateNetworkAclEntry.html
    rule: Annotated[int, Field(ge=1, le=32766)]
    action: Literal["allow", "deny"]
    protocol: Protocol
    cidr: Cidr
    ports: Ports = None


class Nacl(_Model):
    outbound: list[NaclRuleModel] = []
    inbound: list[NaclRuleModel] = []


class SgRuleModel(_Model):
    protocol: Protocol
    cidr: Cidr
    ports: Ports = None


class SecurityGroup(_Model):
    egress: list[SgRuleModel] | None = None
    ingress: list[SgRuleModel] | None = None


class DnsRuleModel(_Model):
    priority: Priority
    name: str = ""
    domains: Annotated[list[DnsDomain], Field(min_length=1)] | None = None
    domain_list_file: str | None = None
    action: Literal["allow", "block", "alert"]
    response: Literal["nodata", "nxdomain", "override"] | None = None
    override_cname: str | None = None
    # BlockOverrideTtl: 0-604800 (Route 53 Resolver API, FirewallRule)
    override_ttl: Annotated[int, Field(ge=0, le=604800)] | None = None
    query_types: Annotated[list[QType], Field(min_length=1)] | None = None


class DnsFirewall(_Model):
    rules: list[DnsRuleModel] = []


class TcpFlags(_Model):
    flags: list[TcpFlag]
    masks: list[TcpFlag] | None = None


class StatelessRuleModel(_Model):
    priority: StatelessPriority
    action: StatelessActionName
    protocols: Annotated[list[IpProtocol], Field(min_length=1)] | None = None
    sources: Annotated[list[Cidr], Field(min_length=1)] | None = None
    destinations: Annotated[list[Cidr], Field(min_length=1)] | None = None
    source_ports: Annotated[list[Ports], Field(min_length=1)] | None = None
    destination_ports: Annotated[list[Ports], Field(min_length=1)] | None = None
    tcp_flags: TcpFlags | None = None


class StatelessGroupModel(_Model):
    priority: StatelessPriority
    name: str = ""
    rules: list[StatelessRuleModel] = []


class DomainListModel(_Model):
    targets: Annotated[list[AwsTarget], Field(min_length=1)]
    target_types: Annotated[list[Literal["tls_sni", "http_host", "aws_route_53_resolved_domain"]],
                            Field(min_length=1)]
    type: Literal["allowlist", "denylist", "rejectlist", "alertlist"]


_AWS_LIST_FIELDS = {"Targets": "targets", "TargetTypes": "target_types",
                    "GeneratedRulesType": "type"}
SOURCES = ("domain_list", "suricata", "suricata_file", "aws_rule_group_file")


class RuleGroupModel(_Model):
    name: str = ""
    priority: Priority | None = None
    domain_list: DomainListModel | None = None
    suricata: str | None = None
    suricata_file: str | None = None
    aws_rule_group_file: str | None = None


class NetworkFirewall(_Model):
    rule_order: Literal["default_action_order", "strict_order"] | None = None
    stateful_default_actions: list[Literal[STATEFUL_DEFAULTS]] | None = None   # type: ignore[valid-type]
    stateless_default_actions: StatelessActionName | None = None
    stateless_fragment_default_actions: StatelessActionName | None = None
    stateless_rule_groups: list[StatelessGroupModel] = []
    rule_groups: list[RuleGroupModel] = []


class Engine(_Model):
    name_wait_packets: Annotated[int, Field(ge=1)] | None = None
    name_wait_bytes: Annotated[int, Field(ge=1)] | None = None
    ech: Literal["pass", "alert", "drop"] | None = None
    sni_resolution: Annotated[Literal["off", "alert", "drop"],
                              BeforeValidator(_yaml_off)] | None = None
    quic_as_tls: bool | None = None
    ipv6_egress_only: bool | None = None
    resolved_domain_ttl_max: Annotated[int, Field(ge=1)] | None = None
    binding_capacity: Annotated[int, Field(ge=1)] | None = None


class PolicyFile(_Model):
    """The whole file.  `home_net` absent means RFC 1918 + fc00::/7 (the default of
    rules.suricata.default_variables), filled in by rules.load."""

    version: Version
    home_net: Annotated[list[Cidr], Field(min_length=1)] | None = None
    nacl: Nacl | None = None
    security_group: SecurityGroup | None = None
    dns_firewall: DnsFirewall | None = None
    network_firewall: NetworkFirewall | None = None
    engine: Engine | None = None


TOP_LEVEL_KEYS = frozenset(PolicyFile.model_fields)


# --- YAML positions


def _path_text(path: Sequence[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class _Locator:
    """Maps a field path to where it was written."""

    def __init__(self, root: yaml.Node, source: str) -> None:
        self.root, self.source = root, source

    def _walk(self, path: Sequence[str | int]) -> list[tuple[yaml.Node, yaml.Node]]:
        """(key, value) nodes along `path`, as far as it exists (a sequence item is its
        own key)."""
        node, steps = self.root, []
        for p in path:
            found = None
            if isinstance(node, yaml.MappingNode) and isinstance(p, str):
                found = next(((k, v) for k, v in node.value if k.value == p), None)
            elif (isinstance(node, yaml.SequenceNode) and isinstance(p, int)
                  and 0 <= p < len(node.value)):
                found = (node.value[p], node.value[p])
            if found is None:
                break
            steps.append(found)
            node = found[1]
        return steps

    def line(self, path: Sequence[str | int]) -> int:
        """1-based line of the field's key (of its parent when the field is missing)."""
        steps = self._walk(path)
        return (steps[-1][0] if steps else self.root).start_mark.line + 1

    def value(self, path: FieldPath) -> yaml.Node:
        steps = self._walk(path)
        return steps[-1][1] if steps else self.root

    def text(self, path: FieldPath) -> str:
        """The entry as written, on one line (for Origin.text)."""
        node = self.value(path)
        return " ".join(self.source[node.start_mark.index:node.end_mark.index].split())


def _compose(text: str, file: str) -> tuple[Any, yaml.Node | None]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_duplicate_keys(node, file)
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f"line {mark.line + 1}" if mark else ""
        raise PolicyError(file, line, e.problem or e.context or "YAML syntax error") from None
    except yaml.YAMLError as e:
        raise PolicyError(file, "", f"YAML syntax error: {e}") from None
    finally:
        loader.dispose()


def _check_duplicate_keys(node: yaml.Node, file: str) -> None:
    # PyYAML keeps the last of two equal keys; a policy must not lose the first silently
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    raise PolicyError(file, f"line {k.start_mark.line + 1}",
                                      f"duplicate key {k.value!r}")
                seen.add(k.value)
            _check_duplicate_keys(v, file)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _check_duplicate_keys(v, file)


def parse_yaml(text: str, file: str) -> Any:
    """The YAML document as Python data (PolicyError on syntax errors, duplicate keys)."""
    return _compose(text, file)[0]


# --- conversion


def _reason(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown field {err['loc'][-1]!r}"
    if err["type"] == "missing":
        return f"required field {err['loc'][-1]!r} is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _union(ranges: list[tuple[int, int]] | None) -> Ranges | None:
    return addr.normalize(ranges) if ranges else None


def _bits(values: list[int]) -> int:
    out = 0
    for v in values:
        out |= v
    return out


class _Builder:
    def __init__(self, file: str, text: str, node: yaml.Node, home_net: Ranges | None) -> None:
        self.file = file
        self.folder = os.path.dirname(file)
        self.loc = _Locator(node, text)
        self.home_net = home_net
        # where each rule group was written, to point at the second of two equal priorities
        self.placed: dict[str, list[tuple[int, str, FieldPath]]] = {"stateless": [], "stateful": []}

    def error(self, path: FieldPath, reason: str) -> PolicyError:
        return PolicyError(self.file, f"line {self.loc.line(path)}, {_path_text(path)}", reason)

    def origin(self, layer: str, group: str, ident: str, path: FieldPath) -> Origin:
        return Origin(layer, group, ident, self.file, self.loc.line(path), self.loc.text(path))

    def read(self, path: FieldPath, name: str) -> tuple[str, str]:
        full = name if os.path.isabs(name) else os.path.join(self.folder, name)
        try:
            with open(full, encoding="utf-8") as f:
                return full, f.read()
        except OSError as e:
            raise self.error(path, f"cannot read {full}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise self.error(path, f"{full} is not UTF-8 text") from None

    def build(self, m: PolicyFile) -> Policy:
        own = addr.normalize(r for net in m.home_net for r in net) if m.home_net is not None else None
        if own is not None:
            self.home_net = own
        pol = Policy(sources=[self.file], home_net=own)
        if m.nacl is not None:
            pol.nacl = self.nacl(m.nacl)
        if m.security_group is not None:
            sg = m.security_group
            pol.security_group = True
            pol.sg_egress = None if sg.egress is None else self.sg("egress", sg.egress)
            pol.sg_ingress = self.sg("ingress", sg.ingress or [])
        if m.dns_firewall is not None:
            pol.dns_firewall = self.dns(m.dns_firewall)
        if m.network_firewall is not None:
            self.network_firewall(m.network_firewall, pol)
        if m.engine is not None:
            pol.options = Options(**m.engine.model_dump())
        return pol

    def ports_for(self, path: FieldPath, protocol: int | None,
                  ports: tuple[int, int] | None) -> Ranges | None:
        # AWS ignores ports on other protocols ("traffic on all ports is allowed", see
        # API_CreateNetworkAclEntry); a port written there is a mistake, not a filter
        if ports is None:
            return None
        if protocol not in PORTED:
            raise self.error(path + ("ports",), "ports apply only to protocol tcp or udp")
        return (ports,)

    def nacl(self, m: Nacl) -> list[NaclRule]:
        out = []
        for direction in ("outbound", "inbound"):
            seen: dict[int, int] = {}
            for i, r in enumerate(getattr(m, direction)):
                path: FieldPath = ("nacl", direction, i)
                if r.rule in seen:
                    raise self.error(path + ("rule",), f"rule number {r.rule} is already used "
                                     f"on line {seen[r.rule]}; numbers are unique per direction")
                seen[r.rule] = self.loc.line(path)
                net = r.cidr
                match = Match(protocols=None if r.protocol is None else frozenset({r.protocol}),
                              dst=net if direction == "outbound" else None,
                              src=net if direction == "inbound" else None,
                              dport=self.ports_for(path, r.protocol, r.ports))
                out.append(NaclRule(r.rule, direction, r.action == "allow", match,
                                    self.origin("nacl", direction, str(r.rule), path)))
        return out

    def sg(self, direction: Literal["egress", "ingress"], rules: list[SgRuleModel]) -> list[SgRule]:
        out = []
        for i, r in enumerate(rules):
            path: FieldPath = ("security_group", direction, i)
            net = r.cidr
            match = Match(protocols=None if r.protocol is None else frozenset({r.protocol}),
                          dst=net if direction == "egress" else None,
                          src=net if direction == "ingress" else None,
                          dport=self.ports_for(path, r.protocol, r.ports))
            out.append(SgRule(direction, match,
                              self.origin("security_group", direction, str(i + 1), path)))
        return out

    def dns(self, m: DnsFirewall) -> list[DnsRule]:
        out = []
        seen: dict[int, int] = {}
        for i, r in enumerate(m.rules):
            path: FieldPath = ("dns_firewall", "rules", i)
            if r.priority in seen:
                raise self.error(path + ("priority",), f"priority {r.priority} is already used "
                                 f"on line {seen[r.priority]}; DNS Firewall priorities are unique")
            seen[r.priority] = self.loc.line(path)
            if (r.domains is None) == (r.domain_list_file is None):
                raise self.error(path, "give either domains or domain_list_file")
            group = r.name
            if r.domains is not None:
                ds = DomainSet(tuple(dict.fromkeys(r.domains)))
            else:
                full, text = self.read(path + ("domain_list_file",), r.domain_list_file or "")
                ds = dnsfw.parse_domain_list(text, full)
                group = group or os.path.basename(full)
            if r.action != "block" and r.response is not None:
                raise self.error(path + ("response",), "response applies only to action: block")
            # BLOCK answers NODATA unless told otherwise (the console's default)
            response = r.response or "nodata"
            if response == "override":
                if r.override_cname is None or r.override_ttl is None:
                    raise self.error(path, "response: override needs override_cname and "
                                     "override_ttl")
                why = domains.check_domain(r.override_cname.removesuffix("."))
                if why:
                    raise self.error(path + ("override_cname",), f"{r.override_cname!r}: {why}")
            elif r.override_cname is not None or r.override_ttl is not None:
                raise self.error(path, "override_cname and override_ttl apply only to "
                                 "response: override")
            out.append(DnsRule(priority=r.priority, domains=ds, action=r.action,
                               response=response, override_name=r.override_cname or "",
                               override_ttl=r.override_ttl or 0,
                               qtypes=frozenset(r.query_types) if r.query_types else None,
                               origin=self.origin("dns_firewall", group, str(r.priority), path)))
        return out

    def network_firewall(self, m: NetworkFirewall, pol: Policy) -> None:
        nf: FieldPath = ("network_firewall",)
        pol.rule_order = m.rule_order
        if m.stateful_default_actions is not None:
            # "only valid when using the strict rule order"
            # https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_FirewallPolicy.html
            if m.rule_order != "strict_order":
                raise self.error(nf + ("stateful_default_actions",), "stateful default actions "
                                 "exist only with rule_order: strict_order")
            if len(set(m.stateful_default_actions)) != len(m.stateful_default_actions):
                raise self.error(nf + ("stateful_default_actions",), "an action is listed twice")
            if sum(a.startswith("drop_") for a in m.stateful_default_actions) > 1:
                raise self.error(nf + ("stateful_default_actions",),
                                 "choose at most one drop_* default action")
            pol.stateful_defaults = tuple(m.stateful_default_actions)
        pol.stateless_default = m.stateless_default_actions
        pol.stateless_fragment_default = m.stateless_fragment_default_actions
        for i, sg in enumerate(m.stateless_rule_groups):
            path = nf + ("stateless_rule_groups", i)
            pol.stateless.append(self.stateless_group(path, sg))
            self.placed["stateless"].append((sg.priority, pol.stateless[-1].name, path))
        given = [g.priority is not None for g in m.rule_groups]
        if any(given) and not all(given):
            raise self.error(nf + ("rule_groups", given.index(False)),
                             "give every rule group a priority, or none (then they run in "
                             "the order written)")
        variables = suricata.default_variables(self.home_net)
        for i, g in enumerate(m.rule_groups):
            self.rule_group(nf + ("rule_groups", i), g, i + 1 if g.priority is None else g.priority,
                            variables, pol)
        for kind, placed in self.placed.items():
            seen: dict[int, str] = {}
            for prio, name, path in placed:
                if prio in seen:
                    raise self.error(path, f"{kind} rule groups {seen[prio]!r} and {name!r} both "
                                     f"have priority {prio}; priorities are unique in a policy")
                seen[prio] = name

    def stateless_group(self, path: FieldPath, g: StatelessGroupModel) -> StatelessGroup:
        name = g.name or f"stateless-{g.priority}"
        rules = []
        seen: dict[int, int] = {}
        for i, r in enumerate(g.rules):
            rp = path + ("rules", i)
            if r.priority in seen:
                raise self.error(rp + ("priority",), f"priority {r.priority} is already used "
                                 f"on line {seen[r.priority]} in this group")
            seen[r.priority] = self.loc.line(rp)
            flags = mask = 0
            if r.tcp_flags is not None:
                # Masks left out: "To inspect all flags in the valid values list, leave
                # this with no setting"; a flag outside the masks would not be inspected
                # https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_TCPFlagField.html
                tf = r.tcp_flags
                mask = 0xFF if tf.masks is None else _bits(tf.masks)
                flags = _bits(tf.flags)
                if flags & ~mask:
                    raise self.error(rp + ("tcp_flags", "flags"),
                                     "a flag outside masks is never inspected; add it to masks")
            # an absent list matches everything (AWS: "If not specified, this matches
            # with any ...", API_MatchAttributes)
            match = Match(protocols=frozenset(r.protocols) if r.protocols else None,
                          src=_union([x for net in r.sources or () for x in net]),
                          dst=_union([x for net in r.destinations or () for x in net]),
                          sport=_union(r.source_ports), dport=_union(r.destination_ports),
                          tcp_flags=flags, tcp_mask=mask)
            rules.append(StatelessRule(r.priority, match, r.action,
                                       self.origin("stateless", name, str(r.priority), rp)))
        return StatelessGroup(name, g.priority, rules)

    def rule_group(self, path: FieldPath, g: RuleGroupModel, priority: int,
                   variables: Variables, pol: Policy) -> None:
        given = [s for s in SOURCES if getattr(g, s) is not None]
        if len(given) != 1:
            raise self.error(path, f"a rule group holds exactly one of {', '.join(SOURCES)}"
                             + (f" (found {', '.join(given)})" if given else ""))
        source = given[0]
        sp = path + (source,)
        if source == "aws_rule_group_file":
            self.aws_rule_group(path, sp, g, priority, pol)
            return
        if source == "domain_list":
            dl = g.domain_list
            assert dl is not None
            name = g.name or f"domain_list-{priority}"
            try:
                rules = aws.domain_list_rules(dl.targets, [t.upper() for t in dl.target_types],
                                              dl.type.upper(), variables, self.file, name)
            except PolicyError as e:
                # its `where` names the RulesSourceList field; point at ours
                field = _AWS_LIST_FIELDS.get(e.where.split("[")[0])
                raise self.error(sp + (field,) if field else sp, e.reason) from None
        elif source == "suricata":
            node = self.loc.value(sp)
            # a block scalar (`|`) starts on the line after its indicator
            first = node.start_mark.line + (2 if getattr(node, "style", None) in ("|", ">") else 1)
            name = g.name or f"suricata-{priority}"
            rules = suricata.parse_rules(g.suricata or "", self.file, variables, group=name,
                                         first_line=first)
        else:
            full, text = self.read(sp, g.suricata_file or "")
            name = g.name or os.path.basename(full)
            rules = suricata.parse_rules(text, full, variables, group=name)
        pol.stateful.append(StatefulGroup(name, priority, rules))
        self.placed["stateful"].append((priority, name, path))

    def aws_rule_group(self, path: FieldPath, sp: FieldPath, g: RuleGroupModel, priority: int,
                       pol: Policy) -> None:
        full, text = self.read(sp, g.aws_rule_group_file or "")
        try:
            data = json.loads(text)
        except ValueError as e:
            raise self.error(sp, f"{full} is not JSON ({e})") from None
        kind = aws.detect(data)
        if kind == "firewall_policy":
            raise self.error(sp, f"{full} is a firewall policy, not a rule group: give it "
                             "as its own --policy")
        if kind != "rule_group":
            raise self.error(sp, f"{full} is not `aws network-firewall describe-rule-group` "
                             "output")
        loaded = aws.load(data, full, self.home_net)
        # the entry's priority (and name, if given) place the group in this policy, as a
        # firewall policy's reference would
        for sl in loaded.stateless:
            pol.stateless.append(replace(sl, name=g.name or sl.name, priority=priority))
            self.placed["stateless"].append((priority, pol.stateless[-1].name, path))
        for sf in loaded.stateful:
            pol.stateful.append(replace(sf, name=g.name or sf.name, priority=priority))
            self.placed["stateful"].append((priority, pol.stateful[-1].name, path))


def load(text: str, file: str, home_net: Ranges | None = None) -> Policy:
    """The YAML policy in `text` (read from `file`).  `home_net` is what $HOME_NET means
    in its Suricata rules and domain lists when the file sets none (rules.load passes
    the home_net another file sets); the returned Policy's home_net is only the file's
    own.  Raises PolicyError with the line and field path."""
    data, node = _compose(text, file)
    if not isinstance(data, dict) or node is None:
        raise PolicyError(file, "line 1", "a policy file is a YAML mapping starting with "
                          "`version: 1`")
    builder = _Builder(file, text, node, home_net)
    try:
        m = PolicyFile.model_validate(data)
    except ValidationError as e:
        # a misspelt key also leaves a required one missing: name the misspelling
        errs = e.errors()
        err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
        raise builder.error(tuple(err["loc"]), _reason(err)) from None
    return builder.build(m)
