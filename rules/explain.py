"""`egressd policy explain`: what the policy did to each packet of a flow, and why.

The packets are decided by the real pipeline (egressd.flowspec runs them); this module
only reads the outcome (one Step per packet: verdict, reason, the catalog ids of the
deciding rule and of an alert, the action asked for, the name the engine read) against
the policy it came from, and says it in words: per packet the layer, the rule (group,
sid / rule number / priority, file:line, the rule as written), the reason and the
alerts; then one paragraph on why the flow ends as it does.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

from egressd.engine.batch import ACT_DNS_NODATA, ACT_DNS_NXDOMAIN, ACT_DNS_OVERRIDE, ACT_REJECT
from egressd.engine.reasons import TABLE
from egressd.rules.compile import CompiledPolicy
from egressd.rules.policy import DnsRule, Origin, Policy, StatefulGroup, StatefulRule, StatelessGroup

_MEANING = {name: meaning for name, _, meaning in TABLE}
# how each layer numbers its rules (Origin.ident)
_IDENT = {"nacl": "rule", "security_group": "rule", "dns_firewall": "priority",
          "stateless": "priority", "stateful": "sid"}
_NAME_KIND = {"tls": "TLS SNI", "http": "HTTP Host", "dns": "DNS query", "quic": "QUIC SNI"}
WIDTH = 100


@dataclass(frozen=True)
class Step:
    """One packet of the flow and what the pipeline decided for it."""

    to_server: bool
    what: str               # "TCP SYN", "TLS ClientHello, SNI example.com (517 bytes)", ...
    proto: int              # inner transport protocol
    verdict: str            # "PASS" / "DROP"
    reason: str             # engine.reasons name ("ok" for a pass)
    rule: int               # catalog id of the deciding rule, -1 none
    alert: int              # catalog id of an alert, -1 none
    action: int             # engine.batch ACT_*
    app: str                # engine.l7 APP_NAMES of the packet
    name: str | None        # the name this packet completed, as the engine read it


def ident(o: Origin) -> str:
    """`sid 9`, `rule 100`, `priority 5`; implicit entries as they are (`*`, `default`)."""
    return f"{_IDENT[o.layer]} {o.ident}" if o.ident.isdigit() and o.layer in _IDENT else o.ident


def rule_line(o: Origin) -> str:
    """layer | group | rule | where it was written."""
    where = f"{o.file}:{o.line}" if o.file and o.line else o.file or "built in"
    return f"{o.layer} | {o.group or '-'} | {ident(o)} | {where}"


def explain(policy: Policy, compiled: CompiledPolicy, steps: list[Step], created: int = 0,
            name: str | None = None) -> list[str]:
    """The per-packet account and the why paragraph.  `name`: the name the flow was
    built to carry, to say so when the engine read none."""
    cat = compiled.catalog
    lines: list[str] = []
    shown: dict[int, int] = {}      # catalog id -> packet whose lines show its text
    for k, s in enumerate(steps, 1):
        lines.append(f"#{k} {'client -> server' if s.to_server else 'server -> client'}  {s.what}")
        lines.append(f"   {s.verdict}" + (f"  {s.reason}: {_MEANING[s.reason]}" if s.verdict == "DROP" else ""))
        if s.name is not None:
            lines.append(f"   read  {_NAME_KIND.get(s.app, s.app)} {s.name}")
        for label, c in (("rule ", s.rule), ("alert", s.alert)):
            if c < 0:
                if label == "rule ":
                    lines.append("   rule  none")
                continue
            lines.append(f"   {label} {rule_line(cat[c])}")
            if c in shown:
                lines.append(f"         (as #{shown[c]})")
            else:
                shown[c] = k
                lines.append(f"         {cat[c].text}")
        if s.action:
            lines.append(f"   act   {_action(policy, cat, s)}")
    if created:
        lines.append(f"egressd created {created} packet{'s' if created > 1 else ''} in answer, "
                     "returned to GWLB with the flow's GENEVE options")
    lines.append("")
    lines += textwrap.wrap("why: " + _why(policy, compiled, steps, name), WIDTH,
                           subsequent_indent="     ", break_on_hyphens=False)
    return lines


def _action(policy: Policy, cat: list[Origin], s: Step) -> str:
    if s.action == ACT_REJECT:
        return ("reject: a TCP RST to the client and one to the server" if s.proto == 6 else
                "reject: an ICMP destination unreachable (administratively prohibited) to the client")
    if s.action in (ACT_DNS_NODATA, ACT_DNS_NXDOMAIN):
        kind = "NODATA (NOERROR, no answer)" if s.action == ACT_DNS_NODATA else "NXDOMAIN"
        return f"DNS Firewall answers the query {kind} instead of forwarding it"
    if s.action == ACT_DNS_OVERRIDE:
        r = _dns_rule(policy, cat[s.rule])
        return (f"DNS Firewall answers the query with a CNAME to {r.override_name} "
                f"(TTL {r.override_ttl}) instead of forwarding it")
    return f"action {s.action}"


# --- why ---------------------------------------------------------------------------------


def _dns_rule(policy: Policy, o: Origin) -> DnsRule:
    return next(r for r in policy.dns_firewall if r.origin == o)


def _stateful(policy: Policy, o: Origin) -> tuple[StatefulGroup, StatefulRule] | None:
    return next(((g, r) for g in policy.stateful for r in g.rules if r.origin == o), None)


def _stateless_group(policy: Policy, o: Origin) -> StatelessGroup | None:
    return next((g for g in policy.stateless for r in g.rules if r.origin == o), None)


def _packet(k: int, s: Step) -> str:
    return f"packet #{k} ({s.what.split(' (')[0]}, {'client -> server' if s.to_server else 'server -> client'})"


def _why(policy: Policy, compiled: CompiledPolicy, steps: list[Step], name: str | None) -> str:
    cat = compiled.catalog
    drop = next((k for k, s in enumerate(steps, 1) if s.verdict == "DROP"), None)
    ruled = next((k for k, s in enumerate(steps, 1) if s.rule >= 0), None)
    at = drop or ruled
    if at is None:
        parts = [_nothing_decided(policy)]
    else:
        s = steps[at - 1]
        parts = [_decision(policy, cat, at, s) if s.rule >= 0 else
                 f"{_packet(at, s)} was dropped by the engine before any policy layer: {s.reason} "
                 f"({_MEANING[s.reason]})"]
        before = [t for t in steps[:at - 1] if t.verdict == "PASS" and t.rule < 0]
        if before and len(before) == at - 1 and s.name is not None and s.rule >= 0 \
                and cat[s.rule].layer == "stateful":
            if s.proto == 6 and all(t.what.startswith("TCP ") for t in before):
                parts.append("the handshake passed before the name")
            else:
                parts.append(f"the {len(before)} packet{'s' if len(before) > 1 else ''} before it "
                             "passed before the name")
        parts.append(_after(steps, at, cat))
    alerts = dict.fromkeys(s.alert for s in steps if s.alert >= 0)
    if alerts:
        parts.append("alerts: " + ", ".join(f"{cat[a].layer} {cat[a].group + ' ' if cat[a].group else ''}"
                                            f"{ident(cat[a])} ({cat[a].text})" for a in alerts))
    if name and not any(s.name for s in steps):
        parts.append(f"the engine read no name from these packets, so no name rule could match {name}")
    quic = next((s.name for s in steps if s.app == "quic" and s.name), None)
    if quic and at is None and not policy.options.quic_as_tls:
        parts.append(f"TLS rules and TLS_SNI lists do not judge the QUIC SNI {quic} unless "
                     "engine.quic_as_tls is true (AWS does not read QUIC)")
    return "; ".join(p for p in parts if p) + "."


def _nothing_decided(policy: Policy) -> str:
    if policy.rule_order != "strict_order":
        return ("no layer dropped a packet and no rule decided the flow: in default action order "
                "a packet no rule drops passes")
    defaults = ", ".join(policy.stateful_defaults or ()) or "none"
    return ("no layer dropped a packet and no rule decided the flow: strict order, no rule matched, "
            f"and the stateful default actions ({defaults}) did not drop these packets")


def _after(steps: list[Step], at: int, cat: list[Origin]) -> str:
    """What the packets after the deciding one did."""
    rest = steps[at:]
    if not rest:
        return ""
    s = steps[at - 1]
    if s.action and cat[s.rule].layer == "dns_firewall" and all(t.verdict == "PASS" for t in rest):
        return ("the response passes: the DNS Firewall judges queries, not flows (a real resolver "
                "would not answer a query egressd answered)")
    if all(t.verdict == s.verdict and t.rule == s.rule for t in rest):
        return f"the later packets follow: {'dropped' if s.verdict == 'DROP' else 'passed'}, same rule"
    return "later packets: " + ", ".join(
        f"#{k} {t.verdict}" + (f" by {cat[t.rule].layer} {ident(cat[t.rule])}" if t.rule >= 0 else "")
        for k, t in enumerate(rest, at + 1))


def _decision(policy: Policy, cat: list[Origin], k: int, s: Step) -> str:
    """The sentence on the rule that decided packet k."""
    o = cat[s.rule]
    p = _packet(k, s)
    verb = "drops" if s.verdict == "DROP" else "passes"
    if o.layer == "nacl":
        hint = "network ACLs are stateless: every packet is judged on its own"
        if o.group == "inbound" and not s.to_server:
            hint += ", and replies need an inbound entry for their ports"
        if o.ident == "*":
            return f"network ACL: no {o.group} entry allows {p}, so the implicit deny (*) drops it; {hint}"
        return f"network ACL {o.group} rule {o.ident} denies {p}; {hint}"
    if o.layer == "egress_only":
        return (f"IPv6 egress-only: the connection was opened from outside home_net, so {p} and "
                "every packet of it are dropped")
    if o.layer == "security_group":
        return (f"no security group rule allows the connection (judged once, on the initiator's "
                f"first packet; replies follow), so {p} is dropped with the rest of it")
    if o.layer == "dns_firewall":
        r = _dns_rule(policy, o)
        return (f"DNS Firewall rule priority {r.priority}{' (' + o.group + ')' if o.group else ''} "
                f"{'blocks' if s.verdict == 'DROP' else 'allows'} the DNS query {s.name or ''}"
                .rstrip() + (f"; {_action(policy, cat, s)}" if s.action else ""))
    if o.layer == "stateless":
        if not o.file:
            return (f"no stateless rule matched {p}; the {o.text} ({_stateless_default(policy, o)}) "
                    f"{verb} it")
        g = _stateless_group(policy, o)
        where = f"stateless rule group {g.name} (priority {g.priority}), " if g else ""
        return (f"{where}rule priority {o.ident} {verb} {p}" +
                (" without the stateful engine" if s.verdict == "PASS" else "") +
                "; stateless rules judge every packet on its own")
    if o.layer == "stateful":
        return _stateful_decision(policy, o, p, s)
    return f"{o.text}: {p} {'dropped' if s.verdict == 'DROP' else 'flagged'}"


def _stateless_default(policy: Policy, o: Origin) -> str:
    return (policy.stateless_fragment_default if o.ident == "fragment default"
            else policy.stateless_default) or "forward"


def _stateful_decision(policy: Policy, o: Origin, p: str, s: Step) -> str:
    strict = policy.rule_order == "strict_order"
    order = "strict order" if strict else "default action order (pass rules first, then drop, reject, alert)"
    if o.ident == "default":
        defaults = ", ".join(policy.stateful_defaults or ())
        return (f"{order}: no stateful rule matched {p}; the default action ({defaults}) drops it"
                + (" (it drops established packets toward the server: the handshake is not)"
                   if "established" in defaults else ""))
    found = _stateful(policy, o)
    if found is None:
        return f"{order}: {o.layer} {ident(o)} decided {p}"
    g, r = found
    group = f"group {g.name} (priority {g.priority})" if strict else f"group {g.name}"
    kind = _NAME_KIND.get(s.app, s.app)
    if r.names and s.name is not None:
        what = " and ".join(f"{'not ' if c.negated else ''}{c.buffer} {s.name}" for c in r.names)
    elif r.app and s.name is not None:
        what = f"{r.app} with {kind} {s.name}"
    elif r.app:
        what = f"{r.app} on {p}"
    else:
        what = f"{p} by its header"
    quic = (" (QUIC judged by the TLS rules: engine.quic_as_tls)"
            if s.app == "quic" and r.app == "tls" else "")
    how = "is the first rule to match" if strict else "is the first rule in action order to match"
    does = {"pass": "it passes the flow", "drop": "it drops the flow", "reject": "it rejects the flow",
            "alert": "it only alerts"}[r.action]
    return f"{order}: {group}, rule {ident(o)} ({r.action}) {how} {what}{quic}: {does}"
