"""AWS Network Firewall JSON: `describe-rule-group` and `describe-firewall-policy`.

Both the describe-* response ({"RuleGroup": ..., "RuleGroupResponse": ...}) and the bare
RuleGroup / FirewallPolicy object of a create-* input file are read.  The AWS shapes
are pydantic models (botocore's network-firewall 2020-11-12 service model): a key that
is not in them is refused, because it may change what matches; the describe response's
metadata (Capacity, Tags, RuleGroupStatus, ...) is accepted and ignored.  Errors name
the field path, e.g. "RuleGroup.RulesSource.StatefulRules[3].Header.Protocol".

Stateful rules become Suricata rules the way AWS feeds them to Suricata: StatefulRules
and RulesString go through `suricata.parse_rules`; a domain list becomes the rules AWS
documents generating for it, each with that rule's text in `Origin.text`.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from egressd.rules import addr, domains, suricata
from egressd.rules.policy import (
    DOMAIN, STATEFUL_DEFAULTS, DomainSet, Match, NameCond, Origin, Pattern, Policy, PolicyError, Ranges, Reference,
    StatefulGroup, StatefulRule, StatelessAction, StatelessGroup, StatelessRule, Variables,
)

# --- the AWS shapes -------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Metadata(BaseModel):
    # AWS keeps adding response metadata (ConsumedCapacity, AnalysisResults, ...); none of
    # it changes what matches.
    model_config = ConfigDict(extra="allow", strict=True)


_PortNumber = Annotated[int, Field(ge=0, le=65535)]
_PriorityNumber = Annotated[int, Field(ge=1, le=65535)]
_VariableName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=32)]
_TcpFlag = Literal["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"]
_RuleOrder = Literal["DEFAULT_ACTION_ORDER", "STRICT_ORDER"]


class _Address(_Strict):
    AddressDefinition: str


class _PortRange(_Strict):
    FromPort: _PortNumber
    ToPort: _PortNumber


class _TCPFlagField(_Strict):
    Flags: list[_TcpFlag]
    Masks: list[_TcpFlag] = []


class _MatchAttributes(_Strict):
    Sources: list[_Address] = []
    Destinations: list[_Address] = []
    SourcePorts: list[_PortRange] = []
    DestinationPorts: list[_PortRange] = []
    Protocols: list[Annotated[int, Field(ge=0, le=255)]] = []
    TCPFlags: list[_TCPFlagField] = []


class _RuleDefinition(_Strict):
    MatchAttributes: _MatchAttributes
    Actions: list[str]


class _StatelessRule(_Strict):
    RuleDefinition: _RuleDefinition
    Priority: _PriorityNumber


class _Dimension(_Strict):
    Value: str


class _PublishMetricAction(_Strict):
    Dimensions: list[_Dimension] = Field(min_length=1, max_length=1)


class _ActionDefinition(_Strict):
    PublishMetricAction: _PublishMetricAction


class _CustomAction(_Strict):
    ActionName: Annotated[str, Field(pattern=r"^[a-zA-Z0-9]+$", max_length=128)]
    ActionDefinition: _ActionDefinition


class _StatelessRulesAndCustomActions(_Strict):
    StatelessRules: list[_StatelessRule]
    CustomActions: list[_CustomAction] = []


class _Header(_Strict):
    Protocol: Literal["IP", "TCP", "UDP", "ICMP", "HTTP", "FTP", "TLS", "SMB", "DNS", "DCERPC",
                      "SSH", "SMTP", "IMAP", "MSN", "KRB5", "IKEV2", "TFTP", "NTP", "DHCP",
                      "HTTP2", "QUIC"]
    Source: str
    SourcePort: str
    Direction: Literal["FORWARD", "ANY"]
    Destination: str
    DestinationPort: str


class _RuleOption(_Strict):
    Keyword: Annotated[str, Field(min_length=1)]
    Settings: list[str] = []


class _StatefulRule(_Strict):
    Action: Literal["PASS", "DROP", "ALERT", "REJECT"]
    Header: _Header
    RuleOptions: list[_RuleOption]


class _RulesSourceList(_Strict):
    Targets: list[str]
    TargetTypes: list[Literal["TLS_SNI", "HTTP_HOST", "AWS_ROUTE_53_RESOLVED_DOMAIN"]] = \
        Field(min_length=1)
    GeneratedRulesType: Literal["ALLOWLIST", "DENYLIST", "REJECTLIST", "ALERTLIST"]


class _RulesSource(_Strict):
    RulesString: str | None = None
    RulesSourceList: _RulesSourceList | None = None
    StatefulRules: list[_StatefulRule] | None = None
    StatelessRulesAndCustomActions: _StatelessRulesAndCustomActions | None = None


class _IPSet(_Strict):
    Definition: list[str]


class _PortSet(_Strict):
    Definition: list[str] = []


class _RuleVariables(_Strict):
    IPSets: dict[_VariableName, _IPSet] = {}
    PortSets: dict[_VariableName, _PortSet] = {}


class _IPSetReference(_Strict):
    ReferenceArn: str


class _ReferenceSets(_Strict):
    IPSetReferences: dict[str, _IPSetReference] = {}


class _StatefulRuleOptions(_Strict):
    RuleOrder: _RuleOrder = "DEFAULT_ACTION_ORDER"


class _RuleGroup(_Strict):
    RuleVariables: _RuleVariables | None = None
    ReferenceSets: _ReferenceSets | None = None
    RulesSource: _RulesSource
    StatefulRuleOptions: _StatefulRuleOptions | None = None


class _RuleGroupResponse(_Metadata):
    RuleGroupArn: str
    RuleGroupName: str
    Type: Literal["STATELESS", "STATEFUL", "STATEFUL_DOMAIN"] | None = None


class _DescribeRuleGroup(_Strict):
    UpdateToken: str | None = None
    ResponseMetadata: Any = None        # what boto3 adds to every response
    RuleGroup: _RuleGroup
    RuleGroupResponse: _RuleGroupResponse


class _StatelessRuleGroupReference(_Strict):
    ResourceArn: str
    Priority: _PriorityNumber


class _StatefulRuleGroupOverride(_Strict):
    Action: Literal["DROP_TO_ALERT"] | None = None


class _StatefulRuleGroupReference(_Strict):
    ResourceArn: str
    Priority: _PriorityNumber | None = None
    Override: _StatefulRuleGroupOverride | None = None
    DeepThreatInspection: bool | None = None    # AWS's use of the logs only


class _FlowTimeouts(_Strict):
    TcpIdleTimeoutSeconds: int | None = None


class _StatefulEngineOptions(_Strict):
    # StreamExceptionPolicy (a connection that breaks midstream inside AWS's engine) and
    # FlowTimeouts (its TCP idle timeout) tune the engine's own stream handling, which
    # egressd's flow table replaces; no rule matches differently for them.
    RuleOrder: _RuleOrder = "DEFAULT_ACTION_ORDER"
    StreamExceptionPolicy: Literal["DROP", "CONTINUE", "REJECT"] | None = None
    FlowTimeouts: _FlowTimeouts | None = None


class _PolicyVariables(_Strict):
    RuleVariables: dict[_VariableName, _IPSet] = {}


class _FirewallPolicy(_Strict):
    StatelessRuleGroupReferences: list[_StatelessRuleGroupReference] = []
    StatelessDefaultActions: list[str]
    StatelessFragmentDefaultActions: list[str]
    StatelessCustomActions: list[_CustomAction] = []
    StatefulRuleGroupReferences: list[_StatefulRuleGroupReference] = []
    StatefulDefaultActions: list[Literal[tuple(f"aws:{a}" for a in STATEFUL_DEFAULTS)]] = []  # type: ignore[misc]
    StatefulEngineOptions: _StatefulEngineOptions | None = None
    TLSInspectionConfigurationArn: str | None = None
    PolicyVariables: _PolicyVariables | None = None
    EnableTLSSessionHolding: bool | None = None


class _FirewallPolicyResponse(_Metadata):
    FirewallPolicyName: str
    FirewallPolicyArn: str


class _DescribeFirewallPolicy(_Strict):
    UpdateToken: str | None = None
    ResponseMetadata: Any = None
    FirewallPolicy: _FirewallPolicy
    FirewallPolicyResponse: _FirewallPolicyResponse


# --- entry points ----------------------------------------------------------------------

def detect(data: object) -> str | None:
    """"rule_group", "firewall_policy" or None for a parsed JSON document."""
    if not isinstance(data, dict):
        return None
    if "RuleGroupResponse" in data or "RuleGroup" in data or "RulesSource" in data:
        return "rule_group"
    if ("FirewallPolicyResponse" in data or "FirewallPolicy" in data
            or "StatelessDefaultActions" in data or "StatelessFragmentDefaultActions" in data):
        return "firewall_policy"
    return None


def load(data: dict, file: str, home_net: Ranges | None = None) -> Policy:
    """The policy one AWS JSON document holds.  `home_net` is the firewall policy's
    HOME_NET (its PolicyVariables): a rule group's $HOME_NET unless the group sets its
    own, and its $EXTERNAL_NET (`!$HOME_NET` of the policy's) unless the group sets that
    too; None: `suricata.default_variables`'s default.  Rule groups come back at
    priority 0, for the firewall policy that references them to place."""
    kind = detect(data)
    if kind == "rule_group":
        return _load_rule_group(data, file, home_net)
    if kind == "firewall_policy":
        return _load_firewall_policy(data, file)
    raise PolicyError(file, "", "not an AWS Network Firewall describe-rule-group or "
                                "describe-firewall-policy document")


# --- helpers ---------------------------------------------------------------------------

def _validate(model: type[BaseModel], data: dict, file: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        reason = {"extra_forbidden": "unknown field (not in the AWS API, or not supported "
                                     "by egressd: it could change what matches)",
                  "missing": "required field is missing"}.get(err["type"], err["msg"])
        raise PolicyError(file, _path(*err["loc"]), reason) from None


def _path(*parts: str | int) -> str:
    """("RuleGroup", "StatefulRules", 3, "Header") -> "RuleGroup.StatefulRules[3].Header";
    empty parts (a bare document's root) and pydantic's "[key]" marker drop out."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p and p != "[key]":
            out += f".{p}" if out else p
    return out


def _ranges_or_any(items: list[str], file: str, where: str) -> Ranges | None:
    """An address list left empty matches any address ("If not specified, this matches
    with any", API_MatchAttributes)."""
    return _cidrs(items, file, where) if items else None


def _cidrs(items: list[str], file: str, where: str) -> Ranges:
    out = []
    for i, text in enumerate(items):
        try:
            out.extend(addr.cidr_set(text))
        except ValueError as e:
            raise PolicyError(file, f"{where}[{i}]", str(e)) from None
    return addr.normalize(out)


def _port_ranges(items: list[_PortRange], file: str, where: str) -> Ranges | None:
    for i, p in enumerate(items):
        if p.FromPort > p.ToPort:
            raise PolicyError(file, f"{where}[{i}]", f"FromPort {p.FromPort} is above "
                                                     f"ToPort {p.ToPort}")
    return addr.normalize((p.FromPort, p.ToPort) for p in items) if items else None


# Stateless actions: exactly one standard action; custom actions only publish metrics.
# https://docs.aws.amazon.com/network-firewall/latest/developerguide/rule-action.html
_STANDARD: dict[str, StatelessAction] = {"aws:pass": "pass", "aws:drop": "drop",
                                         "aws:forward_to_sfe": "forward"}


def _stateless_action(actions: list[str], custom: set[str], file: str,
                      where: str) -> StatelessAction:
    standard = [a for a in actions if a in _STANDARD]
    if len(standard) != 1:
        raise PolicyError(file, where, "needs exactly one of aws:pass, aws:drop, "
                                       f"aws:forward_to_sfe (got {actions})")
    for a in actions:
        if a not in _STANDARD and a not in custom:
            raise PolicyError(file, where, f"action {a!r} is neither a standard action nor "
                                           "a custom action defined alongside")
    return _STANDARD[standard[0]]


def _custom_actions(actions: list[_CustomAction], file: str, where: str) -> set[str]:
    names: set[str] = set()
    for i, a in enumerate(actions):
        if a.ActionName in names:
            raise PolicyError(file, f"{where}[{i}].ActionName",
                              f"custom action {a.ActionName!r} is defined twice")
        names.add(a.ActionName)
    return names


# --- rule groups -----------------------------------------------------------------------

def _load_rule_group(data: dict, file: str, home_net: Ranges | None) -> Policy:
    if "RulesSource" in data:                 # a bare RuleGroup (create-rule-group input)
        rg: _RuleGroup = _validate(_RuleGroup, data, file)
        base, name, arn, rg_type = "", Path(file).stem, "", None
    else:
        doc: _DescribeRuleGroup = _validate(_DescribeRuleGroup, data, file)
        rg, resp = doc.RuleGroup, doc.RuleGroupResponse
        base, name, arn, rg_type = "RuleGroup", resp.RuleGroupName, resp.RuleGroupArn, resp.Type
    src_path = _path(base, "RulesSource")
    src = rg.RulesSource
    given = [k for k in ("RulesString", "RulesSourceList", "StatefulRules",
                         "StatelessRulesAndCustomActions") if getattr(src, k) is not None]
    if len(given) != 1:
        raise PolicyError(file, src_path, "needs exactly one of RulesString, RulesSourceList, "
                                          "StatefulRules, StatelessRulesAndCustomActions "
                                          f"(found {', '.join(given) or 'none'})")
    stateless = given[0] == "StatelessRulesAndCustomActions"
    if rg_type is not None and (rg_type == "STATELESS") != stateless:
        raise PolicyError(file, "RuleGroupResponse.Type",
                          f"is {rg_type} but RulesSource holds {given[0]}")
    policy = Policy(sources=[file])
    if stateless:
        if rg.RuleVariables is not None and (rg.RuleVariables.IPSets or rg.RuleVariables.PortSets):
            raise PolicyError(file, _path(base, "RuleVariables"),
                              "only stateful rule groups use rule variables")
        rules = _stateless_rules(src.StatelessRulesAndCustomActions, name, file,
                                 _path(src_path, "StatelessRulesAndCustomActions"))
        policy.stateless.append(StatelessGroup(name, 0, rules, arn))
        return policy
    if rg.ReferenceSets is not None and rg.ReferenceSets.IPSetReferences:
        # https://docs.aws.amazon.com/network-firewall/latest/developerguide/rule-groups-ip-set-references.html
        raise PolicyError(file, _path(base, "ReferenceSets", "IPSetReferences"),
                          "IP set references (prefix lists, resource groups) are not "
                          "supported: egressd cannot resolve ARNs; list the CIDRs in "
                          "RuleVariables.IPSets instead")
    variables = _rule_variables(rg.RuleVariables, home_net, file, _path(base, "RuleVariables"))
    options = rg.StatefulRuleOptions or _StatefulRuleOptions()
    if src.RulesSourceList is not None:
        dl = src.RulesSourceList
        try:
            rules = domain_list_rules(dl.Targets, list(dl.TargetTypes), dl.GeneratedRulesType,
                                      variables, file, name)
        except PolicyError as e:
            raise PolicyError(file, _path(src_path, "RulesSourceList", e.where),
                              e.reason) from None
    elif src.StatefulRules is not None:
        rules = _stateful_rules(src.StatefulRules, variables, name, file,
                                _path(src_path, "StatefulRules"))
    else:
        rules = _rules_string(src.RulesString or "", variables, name, file,
                              _path(src_path, "RulesString"))
    policy.stateful.append(StatefulGroup(name, 0, rules, arn, options.RuleOrder.lower()))
    return policy


_TCP_BITS = {"FIN": 1, "SYN": 2, "RST": 4, "PSH": 8, "ACK": 16, "URG": 32, "ECE": 64,
             "CWR": 128}


def _tcp_flags(fields: list[_TCPFlagField], file: str, where: str) -> list[tuple[int, int]]:
    """(flags, mask) per TCPFlags entry; [(0, 0)] (any) when there is none.
    https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_TCPFlagField.html:
    Masks empty means all flags are inspected; Flags may only name flags in Masks."""
    out = []
    for i, f in enumerate(fields):
        flags = sum({_TCP_BITS[x] for x in f.Flags})
        mask = sum({_TCP_BITS[x] for x in f.Masks}) if f.Masks else 0xFF
        if flags & ~mask:
            raise PolicyError(file, f"{where}[{i}].Flags",
                              "names a flag that is not in Masks")
        out.append((flags, mask))
    return out or [(0, 0)]


def _stateless_rules(src: _StatelessRulesAndCustomActions, group: str, file: str,
                     where: str) -> list[StatelessRule]:
    custom = _custom_actions(src.CustomActions, file, f"{where}.CustomActions")
    seen: set[int] = set()
    out = []
    for i, r in enumerate(src.StatelessRules):
        at = f"{where}.StatelessRules[{i}]"
        if r.Priority in seen:
            # "You must ensure that the priority settings are unique for the rule group"
            # (API_StatelessRule)
            raise PolicyError(file, f"{at}.Priority", f"priority {r.Priority} is used twice")
        seen.add(r.Priority)
        d = r.RuleDefinition
        m = d.MatchAttributes
        ma = f"{at}.RuleDefinition.MatchAttributes"
        action = _stateless_action(d.Actions, custom, file, f"{at}.RuleDefinition.Actions")
        match = Match(protocols=frozenset(m.Protocols) if m.Protocols else None,
                      src=_ranges_or_any([a.AddressDefinition for a in m.Sources], file,
                                         f"{ma}.Sources"),
                      dst=_ranges_or_any([a.AddressDefinition for a in m.Destinations], file,
                                         f"{ma}.Destinations"),
                      sport=_port_ranges(m.SourcePorts, file, f"{ma}.SourcePorts"),
                      dport=_port_ranges(m.DestinationPorts, file, f"{ma}.DestinationPorts"))
        origin = Origin("stateless", group, str(r.Priority), file,
                        text=r.model_dump_json(exclude_defaults=True))
        # Several TCPFlags entries are alternatives, like every other list in
        # MatchAttributes: one rule each, same priority and origin.
        for flags, mask in _tcp_flags(m.TCPFlags, file, f"{ma}.TCPFlags"):
            out.append(StatelessRule(r.Priority, replace(match, tcp_flags=flags, tcp_mask=mask),
                                     action, origin))
    return sorted(out, key=lambda rule: rule.priority)


def _rule_variables(rv: _RuleVariables | None, home_net: Ranges | None, file: str,
                    where: str) -> Variables:
    """Rule group variables over the policy's.  A group's own HOME_NET does not move its
    EXTERNAL_NET, which stays the policy HOME_NET's complement unless set too:
    https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-limitations-caveats.html"""
    variables = suricata.default_variables(home_net)
    if rv is None:
        return variables
    for name, ip_set in rv.IPSets.items():
        variables.ip_sets[name] = _cidrs(ip_set.Definition, file,
                                         f"{where}.IPSets.{name}.Definition")
    for name, port_set in rv.PortSets.items():
        ranges = []
        for i, text in enumerate(port_set.Definition):
            try:
                ranges.append(addr.port_range(text))
            except ValueError as e:
                raise PolicyError(file, f"{where}.PortSets.{name}.Definition[{i}]",
                                  str(e)) from None
        variables.port_sets[name] = addr.normalize(ranges)
    return variables


def _render(rule: _StatefulRule) -> str:
    """The Suricata rule AWS makes of a standard stateful rule: header fields as written,
    ANY direction as `<>`, each option `keyword:settings;` (example in
    https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-examples.html)."""
    h = rule.Header
    options = " ".join(f"{o.Keyword}:{','.join(o.Settings)};" if o.Settings else f"{o.Keyword};"
                       for o in rule.RuleOptions)
    arrow = "->" if h.Direction == "FORWARD" else "<>"
    return (f"{rule.Action.lower()} {h.Protocol.lower()} {h.Source} {h.SourcePort} {arrow} "
            f"{h.Destination} {h.DestinationPort} ({options})")


def _parse(text: str, variables: Variables, group: str, file: str,
           where: str) -> list[StatefulRule]:
    try:
        return suricata.parse_rules(text, file, variables, group)
    except PolicyError as e:
        # the lines are the JSON string's, not the file's: lead with the field path
        raise PolicyError(file, f"{where}, {e.where}" if e.where else where, e.reason) from None


def _stateful_rules(rules: list[_StatefulRule], variables: Variables, group: str, file: str,
                    where: str) -> list[StatefulRule]:
    out: list[StatefulRule] = []
    sids: dict[int, int] = {}
    for i, r in enumerate(rules):
        text = _render(r)
        for parsed in _parse(text, variables, group, file, f"{where}[{i}]"):
            if parsed.sid in sids:
                raise PolicyError(file, f"{where}[{i}]", f"duplicate sid {parsed.sid} (also "
                                                         f"in {where}[{sids[parsed.sid]}])")
            sids[parsed.sid] = i
            out.append(replace(parsed, origin=replace(parsed.origin, line=None, text=text)))
    return out


def _rules_string(text: str, variables: Variables, group: str, file: str,
                  where: str) -> list[StatefulRule]:
    return [replace(r, origin=replace(r.origin, line=None))
            for r in _parse(text, variables, group, file, where)]


# Domain lists: the rules AWS generates, text and order as its examples show them
# (https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-examples.html,
# "Stateful rules examples: domain list rules"): one rule per target and target type, in
# TargetTypes order, sids from 1; an allowlist ends with one drop rule per type for
# whatever did not pass.  REJECTLIST and ALERTLIST use the DENYLIST rule with their action
# (stateful-rule-groups-domain-names.html); their msg wording is not documented.
_LIST_ACTION = {"ALLOWLIST": "pass", "DENYLIST": "drop", "REJECTLIST": "reject",
                "ALERTLIST": "alert"}
_LIST_WORD = {"ALLOWLIST": "allowlisted", "DENYLIST": "denylisted",
              "REJECTLIST": "rejectlisted", "ALERTLIST": "alertlisted"}


def _list_rule_text(action: str, ttype: str, pattern: Pattern, word: str, sid: int) -> str:
    """The rule for one target, written from its normalized pattern: Suricata refuses
    upper case in http.host content, and the trailing dot is no part of the name."""
    head = f"{action} {'tls' if ttype == 'TLS_SNI' else 'http'} $HOME_NET any -> $EXTERNAL_NET any"
    name = pattern.value.decode("ascii")
    wildcard = pattern.kind == DOMAIN
    content = f'dotprefix; content:".{name}";' if wildcard else f'content:"{name}"; startswith;'
    if ttype == "TLS_SNI":
        return (f"{head} (ssl_state:client_hello; tls.sni; {content} nocase; endswith; "
                f'msg:"matching TLS {word} FQDNs"; priority:1; flow:to_server, established; '
                f"sid:{sid}; rev:1;)")
    return (f'{head} (http.host; {content} endswith; msg:"matching HTTP {word} FQDNs"; '
            f"priority:1; flow:to_server, established; sid:{sid}; rev:1;)")


def _list_default_text(ttype: str, sid: int) -> str:
    if ttype == "TLS_SNI":
        return ('drop tls $HOME_NET any -> $EXTERNAL_NET any (msg:"not matching any TLS '
                'allowlisted FQDNs"; priority:1; ssl_state:client_hello; '
                f"flow:to_server, established; sid:{sid}; rev:1;)")
    return ('drop http $HOME_NET any -> $EXTERNAL_NET any (http.header_names; '
            'content:"|0d 0a|"; startswith; msg:"not matching any HTTP allowlisted FQDNs"; '
            f"priority:1; flow:to_server, established; sid:{sid}; rev:1;)")


def domain_list_rules(targets: list[str], target_types: list[str], generated_type: str,
                      variables: Variables, file: str, group: str) -> list[StatefulRule]:
    """The stateful rules AWS generates for a domain list (RulesSourceList): target types
    TLS_SNI / HTTP_HOST, GeneratedRulesType ALLOWLIST / DENYLIST / REJECTLIST / ALERTLIST.
    $HOME_NET and $EXTERNAL_NET come from `variables`.  Raises PolicyError whose `where`
    is the offending field ("Targets[2]", "TargetTypes", "GeneratedRulesType")."""
    for t in target_types:
        if t not in ("TLS_SNI", "HTTP_HOST", "AWS_ROUTE_53_RESOLVED_DOMAIN"):
            raise PolicyError(file, "TargetTypes", f"unknown target type {t!r}")
    if generated_type not in _LIST_ACTION:
        raise PolicyError(file, "GeneratedRulesType", f"unknown type {generated_type!r}")
    patterns = []
    for i, target in enumerate(targets):
        try:
            patterns.append(domains.aws_target(target))
        except ValueError as e:
            raise PolicyError(file, f"Targets[{i}]", str(e)) from None
    # TLS and HTTP ride on TCP (as suricata.parse_rules reads a tls or http header)
    match = Match(protocols=frozenset({6}), src=variables.ip_sets["HOME_NET"],
                  dst=variables.ip_sets["EXTERNAL_NET"])
    action, word = _LIST_ACTION[generated_type], _LIST_WORD[generated_type]
    out: list[StatefulRule] = []

    def add(rule_action: str, app: str, names: tuple[NameCond, ...], msg: str,
            text: str) -> None:
        sid = len(out) + 1
        out.append(StatefulRule(rule_action, match, Origin("stateful", group, str(sid), file,
                                                           text=text),
                                app=app, flow_dir="to_server", established=True,
                                names=names, priority=1, sid=sid, msg=msg))

    for ttype in target_types:
        if ttype == "AWS_ROUTE_53_RESOLVED_DOMAIN":
            # AWS documents the target type (route53-resolved-ip-validation-rules.html)
            # but not the rules it generates: egressd's reading is one rule of the
            # list's action on any IP traffic whose destination was resolved for a
            # listed name, the keyword's documented meaning; it adds no drop rule of its
            # own to an allowlist (what "the specified protocol type" is, is unsaid)
            sid = len(out) + 1
            text = (f"{action} ip $HOME_NET any -> $EXTERNAL_NET any "
                    f'(aws_route_53_resolved_domain:"{",".join(targets)}"; '
                    f'msg:"matching resolved {word} FQDNs"; sid:{sid}; rev:1;)')
            out.append(StatefulRule(action, replace(match, protocols=None),
                                    Origin("stateful", group, str(sid), file, text=text),
                                    resolved=DomainSet(tuple(patterns)), sid=sid,
                                    msg=f"matching resolved {word} FQDNs"))
            continue
        app, buffer, proto = (("tls", "tls.sni", "TLS") if ttype == "TLS_SNI"
                              else ("http", "http.host", "HTTP"))
        for pattern in patterns:
            add(action, app, (NameCond(buffer, DomainSet((pattern,))),),
                f"matching {proto} {word} FQDNs",
                _list_rule_text(action, ttype, pattern, word, len(out) + 1))
    if generated_type == "ALLOWLIST":
        # "For Allow, traffic of the specified protocol type that doesn't match the domain
        # specifications is denied" (stateful-rule-groups-domain-names.html): a drop rule
        # for every such flow, which the pass rules above win over.
        for ttype in target_types:
            if ttype == "AWS_ROUTE_53_RESOLVED_DOMAIN":
                continue
            app, proto = ("tls", "TLS") if ttype == "TLS_SNI" else ("http", "HTTP")
            add("drop", app, (), f"not matching any {proto} allowlisted FQDNs",
                _list_default_text(ttype, len(out) + 1))
    return out


# --- firewall policies -----------------------------------------------------------------

def _managed(arn: str) -> bool:
    # arn:aws:network-firewall:REGION:aws-managed:stateful-rulegroup/NAME
    parts = arn.split(":")
    return len(parts) > 4 and parts[4] == "aws-managed"


def _load_firewall_policy(data: dict, file: str) -> Policy:
    if "StatelessDefaultActions" in data or "StatelessFragmentDefaultActions" in data:
        fp: _FirewallPolicy = _validate(_FirewallPolicy, data, file)
        base = ""
    else:
        fp = _validate(_DescribeFirewallPolicy, data, file).FirewallPolicy
        base = "FirewallPolicy"

    def at(*parts: str | int) -> str:
        return _path(base, *parts)

    if fp.TLSInspectionConfigurationArn is not None:
        raise PolicyError(file, at("TLSInspectionConfigurationArn"),
                          "TLS inspection is not supported: egressd does not decrypt, and "
                          "the decrypted traffic's rules would go unmatched")
    if fp.EnableTLSSessionHolding:
        raise PolicyError(file, at("EnableTLSSessionHolding"),
                          "TLS session holding needs TLS inspection, which egressd does not do")
    custom = _custom_actions(fp.StatelessCustomActions, file, at("StatelessCustomActions"))
    engine = fp.StatefulEngineOptions or _StatefulEngineOptions()
    strict = engine.RuleOrder == "STRICT_ORDER"
    policy = Policy(
        sources=[file],
        stateless_default=_stateless_action(fp.StatelessDefaultActions, custom, file,
                                            at("StatelessDefaultActions")),
        stateless_fragment_default=_stateless_action(
            fp.StatelessFragmentDefaultActions, custom, file,
            at("StatelessFragmentDefaultActions")),
        rule_order=engine.RuleOrder.lower(),
        stateful_defaults=_stateful_defaults(fp.StatefulDefaultActions, strict, file,
                                             at("StatefulDefaultActions")))
    if fp.PolicyVariables is not None:
        for name, ip_set in fp.PolicyVariables.RuleVariables.items():
            where = at("PolicyVariables", "RuleVariables", name)
            if name != "HOME_NET":
                # API_PolicyVariables: the policy's variables are "for the Suricata
                # HOME_NET variable"
                raise PolicyError(file, where, "a firewall policy can only set HOME_NET")
            policy.home_net = _cidrs(ip_set.Definition, file, f"{where}.Definition")
    priorities: set[int] = set()
    for i, s in enumerate(fp.StatelessRuleGroupReferences):
        where = at("StatelessRuleGroupReferences", i)
        _check_reference(s.ResourceArn, "stateless", file, f"{where}.ResourceArn")
        if s.Priority in priorities:
            raise PolicyError(file, f"{where}.Priority", f"priority {s.Priority} is used twice")
        priorities.add(s.Priority)
        policy.references.append(Reference(s.ResourceArn, "stateless", s.Priority, file))
    priorities.clear()
    for i, r in enumerate(fp.StatefulRuleGroupReferences):
        where = at("StatefulRuleGroupReferences", i)
        _check_reference(r.ResourceArn, "stateful", file, f"{where}.ResourceArn")
        # Priority "only applies to firewall policies that specify the STRICT_ORDER rule
        # order" and must be unique (API_StatefulRuleGroupReference).  Override
        # DROP_TO_ALERT "only applies to managed rule groups", refused just above, so it
        # changes nothing here (API_StatefulRuleGroupOverride).
        if strict:
            if r.Priority is None:
                raise PolicyError(file, f"{where}.Priority",
                                  "required under STRICT_ORDER: it orders the rule groups")
            if r.Priority in priorities:
                raise PolicyError(file, f"{where}.Priority",
                                  f"priority {r.Priority} is used twice")
            priorities.add(r.Priority)
        policy.references.append(Reference(r.ResourceArn, "stateful", r.Priority or 0, file))
    return policy


def _check_reference(arn: str, kind: str, file: str, where: str) -> None:
    if _managed(arn):
        raise PolicyError(file, where, "AWS-managed rule groups cannot be loaded: egressd "
                                       "has no copy of their rules; copy the group into one "
                                       "of your own and give that group's "
                                       "describe-rule-group JSON alongside")
    other = "stateful" if kind == "stateless" else "stateless"
    if f":{other}-rulegroup/" in arn:
        raise PolicyError(file, where, f"is a {other} rule group, referenced as {kind}")


def _stateful_defaults(actions: list[str], strict: bool, file: str,
                       where: str) -> tuple[str, ...]:
    """Stateful default actions "only valid when using the strict rule order"
    (API_FirewallPolicy); two drop actions contradict each other, so AWS offers one."""
    if actions and not strict:
        raise PolicyError(file, where, "stateful default actions need "
                                       "StatefulEngineOptions.RuleOrder STRICT_ORDER")
    names = tuple(a.removeprefix("aws:") for a in actions)
    if len(set(names)) != len(names):
        raise PolicyError(file, where, "an action is listed twice")
    if sum(n.startswith("drop_") for n in names) > 1:
        raise PolicyError(file, where, "choose at most one aws:drop_* default action")
    return names
