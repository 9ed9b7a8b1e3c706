"""Policy files, recognized by content and merged in the order given (`--policy` may be
repeated), and the summary `egressd policy check` prints.

Accepted, whatever the file is called: the YAML policy (rules.model), the JSON AWS
prints for `aws network-firewall describe-rule-group` / `describe-firewall-policy`
(rules.aws), Suricata rules (rules.suricata) and DNS Firewall domain lists (rules.dnsfw).

Merging: lists are concatenated; a setting two files give differently is an error that
names both; a firewall policy's rule group references are resolved by ARN against the
rule groups the other files hold, and then every rule group must be one it references
(AWS evaluates only those).  DNS Firewall rules of all files form one list ordered by
priority, so priorities must differ between files; a domain list file's block rule comes
after all of them.  What no file sets takes AWS's default (rule order
DEFAULT_ACTION_ORDER, no stateful default actions) or egressd's (stateless default
actions forward to the stateful engine; DEFAULT_OPTIONS; home_net RFC 1918 + fc00::/7).
"""
from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from egressd.rules import aws, dnsfw, model, suricata
from egressd.rules.addr import V4_BASE
from egressd.rules.policy import (
    DEFAULT_OPTIONS, DomainSet, Options, Policy, PolicyError, Ranges, StatefulGroup,
    StatelessGroup,
)

ACCEPTED = ("a YAML policy (version: 1), the JSON of `aws network-firewall "
            "describe-rule-group` or `describe-firewall-policy`, Suricata rules, or a "
            "DNS Firewall domain list (one domain per line)")


@dataclass
class _Loaded:
    file: str
    kind: str            # "yaml", "aws", "suricata", "domain_list"
    text: str
    policy: Policy


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PolicyError(path, "", f"cannot read the file: {e.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PolicyError(path, "", "not UTF-8 text; expected " + ACCEPTED) from None


def _detect(text: str, file: str) -> tuple[str, Any]:
    """The file's kind by its content, and the parsed JSON for "aws"."""
    if not text.strip():
        raise PolicyError(file, "", "the file is empty; expected " + ACCEPTED)
    json_error = None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as e:
            json_error = e
        else:
            kind = aws.detect(data)
            if kind is not None:
                return "aws", data
            if not (isinstance(data, dict) and model.TOP_LEVEL_KEYS & set(data)):
                raise PolicyError(file, "", "JSON, but not `aws network-firewall "
                                  "describe-rule-group` or `describe-firewall-policy` output")
    try:
        data = model.parse_yaml(text, file)
    except PolicyError as e:
        data, yaml_error = None, e
    else:
        yaml_error = None
    if isinstance(data, dict) and model.TOP_LEVEL_KEYS & set(data):
        return "yaml", None
    if yaml_error is not None and any(line.startswith("version:") for line in text.splitlines()):
        raise yaml_error
    if json_error is not None:
        raise PolicyError(file, f"line {json_error.lineno}", f"invalid JSON: {json_error.msg}")
    if suricata.looks_like_rules(text):
        return "suricata", None
    if dnsfw.looks_like_domain_list(text):
        return "domain_list", None
    raise PolicyError(file, "", "not a policy egressd reads; expected " + ACCEPTED)


def _load(file: str, text: str, home_net: Ranges | None) -> _Loaded:
    """One file; `home_net` (when not None) is what $HOME_NET means in files that do
    not set it themselves."""
    kind, data = _detect(text, file)
    if kind == "yaml":
        pol = model.load(text, file, home_net)
    elif kind == "aws":
        pol = aws.load(data, file, home_net)
    elif kind == "suricata":
        pol = suricata.load(text, file)
        if home_net is not None:
            variables = suricata.default_variables(home_net)
            pol.stateful = [replace(g, rules=suricata.parse_rules(text, file, variables,
                                                                  group=g.name))
                            for g in pol.stateful]
    else:
        pol = dnsfw.load_list(text, file)
    return _Loaded(file, kind, text, pol)


def load_file(path: str | os.PathLike[str]) -> Policy:
    """One policy file, as written (settings it leaves out stay None)."""
    file = os.fspath(path)
    return _load(file, _read(file), None).policy


class _Merger:
    def __init__(self) -> None:
        self.out = Policy()
        self.owner: dict[str, str] = {}                      # setting -> file that set it
        self.groups: list[tuple[str, Any, str]] = []         # (kind, group, file)
        self.dns_owner: dict[int, str] = {}
        self.nacl_owner: dict[tuple[str, int], str] = {}

    def setting(self, obj: Any, attr: str, label: str, value: Any, file: str) -> None:
        if value is None:
            return
        current = getattr(obj, attr)
        if current is None:
            setattr(obj, attr, value)
            self.owner[label] = file
        elif current != value:
            raise PolicyError(file, "", f"{label} is {_show(value)} here but {_show(current)} "
                              f"in {self.owner[label]}; give it once, or the same in both")

    def add(self, ld: _Loaded) -> None:
        p, f, out = ld.policy, ld.file, self.out
        out.sources += p.sources or [f]
        self.setting(out, "home_net", "home_net", p.home_net, f)
        self.setting(out, "rule_order", "rule_order", p.rule_order, f)
        self.setting(out, "stateful_defaults", "stateful default actions", p.stateful_defaults, f)
        self.setting(out, "stateless_default", "stateless default action", p.stateless_default, f)
        self.setting(out, "stateless_fragment_default", "stateless fragment default action",
                     p.stateless_fragment_default, f)
        for fld in fields(Options):
            self.setting(out.options, fld.name, f"engine.{fld.name}",
                         getattr(p.options, fld.name), f)
        if p.nacl is not None:
            for r in p.nacl:
                key = (r.direction, r.number)
                if key in self.nacl_owner:
                    raise PolicyError(f, "", f"nacl {r.direction} rule {r.number} is also "
                                      f"defined in {self.nacl_owner[key]}")
                self.nacl_owner[key] = f
            out.nacl = (out.nacl or []) + p.nacl
        out.security_group = out.security_group or p.security_group
        if p.sg_egress is not None:
            # egress rules from any file replace the default allow-all
            out.sg_egress = (out.sg_egress or []) + p.sg_egress
        if p.sg_ingress is not None:
            out.sg_ingress = (out.sg_ingress or []) + p.sg_ingress
        if ld.kind != "domain_list":
            for r in p.dns_firewall:
                self.dns_priority(r.priority, f)
            out.dns_firewall += p.dns_firewall
        self.groups += [("stateless", g, f) for g in p.stateless]
        self.groups += [("stateful", g, f) for g in p.stateful]
        out.references += p.references

    def dns_priority(self, priority: int, file: str) -> None:
        if priority in self.dns_owner:
            raise PolicyError(file, "", f"DNS Firewall priority {priority} is also used in "
                              f"{self.dns_owner[priority]}; priorities are unique")
        self.dns_owner[priority] = file

    def add_lists(self, lists: list[_Loaded]) -> None:
        """Domain lists given directly: their block rules run after every other rule."""
        nxt = max(self.dns_owner, default=0) + 1
        for ld in lists:
            for r in ld.policy.dns_firewall:
                self.dns_priority(nxt, ld.file)
                self.out.dns_firewall.append(replace(r, priority=nxt))
                nxt += 1

    def resolve(self) -> None:
        """Rule groups referenced by a firewall policy take the reference's priority;
        without a firewall policy every group loaded is used as loaded."""
        out = self.out
        if not out.references:
            out.stateless = [g for kind, g, _ in self.groups if kind == "stateless"]
            out.stateful = [g for kind, g, _ in self.groups if kind == "stateful"]
            return
        policy_files = list(dict.fromkeys(r.file for r in out.references))
        if len(policy_files) > 1:
            raise PolicyError(policy_files[1], "", f"a second firewall policy (the first is "
                              f"{policy_files[0]}); give one")
        by_arn: dict[str, tuple[str, Any, str]] = {}
        for kind, g, f in self.groups:
            if g.arn in by_arn:
                raise PolicyError(f, "", f"rule group {g.arn} is also loaded from "
                                  f"{by_arn[g.arn][2]}")
            if g.arn:
                by_arn[g.arn] = (kind, g, f)
        resolved: list[tuple[str, Any, str]] = []
        for ref in out.references:
            hit = by_arn.pop(ref.arn, None)
            if hit is None:
                seen = any(g.arn == ref.arn for _, g, _ in resolved)
                raise PolicyError(ref.file, "", f"rule group {ref.arn} is referenced twice"
                                  if seen else
                                  f"the firewall policy references rule group {ref.arn}, "
                                  "which no other file holds; add the JSON of `aws "
                                  f"network-firewall describe-rule-group --rule-group-arn "
                                  f"{ref.arn}` as another --policy")
            kind, g, f = hit
            if kind != ref.kind:
                raise PolicyError(ref.file, "", f"rule group {ref.arn} is referenced as "
                                  f"{ref.kind} but {f} holds a {kind} rule group")
            resolved.append((kind, replace(g, priority=ref.priority), f))
        for kind, g, f in self.groups:
            if not g.arn or g.arn in by_arn:
                raise PolicyError(f, "", f"{kind} rule group {g.name!r} is not referenced by "
                                  f"the firewall policy in {policy_files[0]}; AWS evaluates "
                                  "only the rule groups a firewall policy lists")
        self.groups = resolved
        out.stateless = [g for kind, g, _ in resolved if kind == "stateless"]
        out.stateful = [g for kind, g, _ in resolved if kind == "stateful"]

    def finish(self) -> Policy:
        out = self.out
        if out.home_net is None:
            out.home_net = suricata.default_variables(None).ip_sets["HOME_NET"]
        if out.rule_order is None:
            # rule groups tested without a policy: the policy a user would make for them
            # takes their order (AWS requires the two to match), if they agree
            orders = {g.rule_order for kind, g, _ in self.groups
                      if kind == "stateful" and g.rule_order is not None}
            if len(orders) == 1:
                out.rule_order = orders.pop()
        # "DEFAULT_ACTION_ORDER is the default option"
        # https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_StatefulEngineOptions.html
        out.rule_order = out.rule_order or "default_action_order"
        # AWS has no default here (a firewall policy must name both); forwarding lets
        # the stateful layer decide, as a policy without stateless rules means
        out.stateless_default = out.stateless_default or "forward"
        out.stateless_fragment_default = out.stateless_fragment_default or "forward"
        # each loader refuses stateful default actions without strict order, and files
        # cannot disagree on the order, so the merged policy needs no second check
        if out.stateful_defaults is None:
            out.stateful_defaults = ()
        for fld in fields(Options):
            if getattr(out.options, fld.name) is None:
                setattr(out.options, fld.name, getattr(DEFAULT_OPTIONS, fld.name))
        strict = out.rule_order == "strict_order"
        prio: dict[tuple[str, int], tuple[str, str]] = {}
        for kind, g, f in self.groups:
            # "The settings for your rule groups must match the settings for the firewall
            # policy that they belong to."
            # https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-rule-evaluation-order.html
            if kind == "stateful" and g.rule_order is not None and g.rule_order != out.rule_order:
                raise PolicyError(f, "", f"rule group {g.name!r} uses {g.rule_order} but the "
                                  f"policy uses {out.rule_order}; AWS requires them to match")
            # stateless groups always run by priority, stateful ones only in strict order
            if kind == "stateless" or strict:
                key = (kind, g.priority)
                if key in prio:
                    other, of = prio[key]
                    raise PolicyError(f, "", f"{kind} rule groups {other!r} ({of}) and "
                                      f"{g.name!r} both have priority {g.priority}; give each "
                                      "its own (a Suricata file given directly can instead be "
                                      "listed in the YAML's rule_groups with a priority)")
                prio[key] = (g.name, f)
        out.stateless.sort(key=lambda g: g.priority)
        if strict:
            out.stateful.sort(key=lambda g: g.priority)
        return out


def load_policies(paths: Sequence[str | os.PathLike[str]]) -> Policy:
    """All files merged in the order given, references resolved, defaults filled."""
    texts = [(os.fspath(p), _read(os.fspath(p))) for p in paths]
    loaded = [_load(p, t, None) for p, t in texts]
    homes = _Merger()
    for ld in loaded:
        homes.setting(homes.out, "home_net", "home_net", ld.policy.home_net, ld.file)
    home_net = homes.out.home_net
    if home_net is not None:
        # $HOME_NET in files that do not set it means the home_net another file sets
        loaded = [_load(ld.file, ld.text, home_net)
                  if ld.kind != "domain_list" and ld.policy.home_net is None else ld
                  for ld in loaded]
    m = _Merger()
    for ld in loaded:
        m.add(ld)
    m.add_lists([ld for ld in loaded if ld.kind == "domain_list"])
    m.resolve()
    return m.finish()


# --- the summary


def _cidrs(ranges: Ranges) -> str:
    out = []
    for lo, hi in ranges:
        if V4_BASE <= lo and hi <= V4_BASE + 0xFFFFFFFF:
            nets = ipaddress.summarize_address_range(ipaddress.IPv4Address(lo - V4_BASE),
                                                     ipaddress.IPv4Address(hi - V4_BASE))
        else:
            nets = ipaddress.summarize_address_range(ipaddress.IPv6Address(lo),
                                                     ipaddress.IPv6Address(hi))
        out += [str(n) for n in nets]
    return ", ".join(out)


def _show(value: Any) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return _cidrs(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return repr(value)


def _count(ds: DomainSet | None) -> int:
    return len(ds.patterns) if ds is not None else 0


def _group_domains(g: StatefulGroup) -> int:
    pats = set()
    for r in g.rules:
        for cond in r.names:
            pats.update(cond.names.patterns)
        if r.resolved is not None:
            pats.update(r.resolved.patterns)
    return len(pats)


def describe(policy: Policy) -> list[str]:
    """Human summary: what each layer holds, the defaults and the engine options."""
    p = policy
    lines = [f"sources: {', '.join(p.sources) if p.sources else '(none)'}",
             f"home_net: {_cidrs(p.home_net) if p.home_net is not None else '(default)'}"]
    if p.nacl is None:
        lines.append("nacl: off")
    else:
        n_out = sum(1 for r in p.nacl if r.direction == "outbound")
        lines.append(f"nacl: {n_out} outbound, {len(p.nacl) - n_out} inbound rules, "
                     "then deny everything else (*)")
    if not p.security_group:
        lines.append("security group: off")
    else:
        egress = ("allow all (AWS default)" if p.sg_egress is None
                  else f"{len(p.sg_egress)} allow rules")
        lines.append(f"security group: egress {egress}; ingress "
                     f"{len(p.sg_ingress or [])} allow rules; replies allowed")
    if not p.dns_firewall:
        lines.append("dns firewall: off")
    else:
        lines.append(f"dns firewall: {len(p.dns_firewall)} rules")
        for r in sorted(p.dns_firewall, key=lambda r: r.priority):
            act = r.action
            if r.action == "block":
                act += f" {r.response}"
                if r.response == "override":
                    act += f" -> {r.override_name} ttl {r.override_ttl}"
            qt = f", query types {sorted(r.qtypes)}" if r.qtypes else ""
            label = f" [{r.origin.group}]" if r.origin.group else ""
            lines.append(f"  priority {r.priority}: {act}, {_count(r.domains)} domains{qt}{label}")
    n_rules = sum(len(g.rules) for g in p.stateless)
    lines.append(f"stateless: {len(p.stateless)} groups, {n_rules} rules; default "
                 f"{p.stateless_default or '(unset)'}, fragments "
                 f"{p.stateless_fragment_default or '(unset)'}")
    for sg in p.stateless:
        lines.append(f"  {_group_label(sg)}: {len(sg.rules)} rules")
    defaults = ", ".join(p.stateful_defaults) if p.stateful_defaults else "none"
    lines.append(f"stateful: {len(p.stateful)} groups, {sum(len(g.rules) for g in p.stateful)} "
                 f"rules; rule order {p.rule_order or '(unset)'}; default actions {defaults}")
    for sf in p.stateful:
        lines.append(f"  {_group_label(sf)}: {len(sf.rules)} rules, {_group_domains(sf)} "
                     "domain patterns")
    for ref in p.references:
        lines.append(f"  references {ref.kind} rule group {ref.arn} (priority {ref.priority})")
    opts = ", ".join(f"{f.name}={getattr(p.options, f.name)}" for f in fields(Options)
                     if getattr(p.options, f.name) is not None)
    lines.append(f"engine: {opts or '(defaults)'}")
    return lines


def _group_label(g: StatelessGroup | StatefulGroup) -> str:
    return f"{g.name} (priority {g.priority}{', ' + g.arn if g.arn else ''})"
