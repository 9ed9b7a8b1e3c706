"""AWS Network Firewall JSON (describe-rule-group / describe-firewall-policy) loader.

Fixtures under tests/data/aws are hand-written in the shape the AWS CLI returns; the
domain-list rule text is compared with the rules AWS documents generating, and every
generated rule is given to Suricata itself (`suricata -T`) to prove it is valid.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from egressd.rules import addr, aws, suricata
from egressd.rules.policy import (
    DOMAIN, EXACT, DomainSet, Match, NameCond, Origin, Pattern, Policy, PolicyError, Reference,
    StatefulRule, StatelessRule,
)

DATA = Path(__file__).parent / "data" / "aws"


def doc(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def load(name: str, data: dict | None = None, **kw) -> Policy:
    return aws.load(doc(name) if data is None else data, str(DATA / name), **kw)


def net(*cidrs: str):
    return addr.cidrs(cidrs)


def external(home_net):
    """$EXTERNAL_NET when the firewall policy's HOME_NET is `home_net`: `!$HOME_NET`."""
    return suricata.default_variables(home_net).ip_sets["EXTERNAL_NET"]


# --- detection -------------------------------------------------------------------------

def test_detect_every_shape():
    for name in ("stateless-rulegroup.json", "domain-allowlist.json", "stateful-rules.json",
                 "rules-string.json"):
        assert aws.detect(doc(name)) == "rule_group", name
    assert aws.detect(doc("domain-allowlist.json")["RuleGroup"]) == "rule_group"
    assert aws.detect(doc("firewall-policy.json")) == "firewall_policy"
    assert aws.detect(doc("firewall-policy.json")["FirewallPolicy"]) == "firewall_policy"
    for other in ({"version": 1}, [], "RuleGroup", None, {"rules": []}):
        assert aws.detect(other) is None
    with pytest.raises(PolicyError, match="not an AWS Network Firewall"):
        aws.load({"version": 1}, "x.json")


# --- stateless rule groups ----------------------------------------------------------------

def test_stateless_group_priorities_flags_and_forward():
    p = load("stateless-rulegroup.json")
    assert p.stateful == [] and p.sources == [str(DATA / "stateless-rulegroup.json")]
    [g] = p.stateless
    assert (g.name, g.priority, g.arn) == (
        "egress-stateless", 0,
        "arn:aws:network-firewall:us-east-1:111122223333:stateless-rulegroup/egress-stateless")
    f = str(DATA / "stateless-rulegroup.json")

    def origin(priority: int) -> Origin:
        return Origin("stateless", "egress-stateless", str(priority), f)

    # FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128 (TCP header bit order); no
    # Masks inspects all eight flags (API_TCPFlagField); two TCPFlags entries: two rules
    # with the priority of the one they come from; rules in priority order
    assert [replace(r, origin=replace(r.origin, text="")) for r in g.rules] == [
        StatelessRule(5, Match(protocols=frozenset({6}), tcp_flags=2, tcp_mask=2 | 16),
                      "drop", origin(5)),
        StatelessRule(5, Match(protocols=frozenset({6}), tcp_flags=4, tcp_mask=0xFF),
                      "drop", origin(5)),
        StatelessRule(10, Match(protocols=frozenset({6}), src=net("192.0.2.0/24"),
                                dst=net("0.0.0.0/0"), dport=((80, 80), (443, 443))),
                      "forward", origin(10)),
        StatelessRule(20, Match(protocols=frozenset({17}), src=net("2001:db8::/32"),
                                sport=((1024, 65535),)), "pass", origin(20)),
    ]


def test_stateless_origin_text_is_the_rule_as_written():
    [g] = load("stateless-rulegroup.json").stateless
    raw = doc("stateless-rulegroup.json")["RuleGroup"]["RulesSource"][
        "StatelessRulesAndCustomActions"]["StatelessRules"]
    assert [json.loads(r.origin.text) for r in g.rules] == [raw[1], raw[1], raw[0], raw[2]]


# --- domain lists ------------------------------------------------------------------------

def test_domain_allowlist_rules():
    policy_home = net("10.0.0.0/8")
    p = load("domain-allowlist.json", home_net=policy_home)
    [g] = p.stateful
    assert (g.name, g.priority, g.rule_order) == ("package-hosts", 0, "strict_order")
    assert g.arn.endswith(":stateful-rulegroup/package-hosts")
    # the group's own HOME_NET; EXTERNAL_NET stays the policy's (!$HOME_NET of the
    # policy's HOME_NET); TLS and HTTP are TCP
    match = Match(protocols=frozenset({6}), src=net("192.0.2.0/24", "2001:db8:10::/48"),
                  dst=external(policy_home))
    pkgs = DomainSet((Pattern(DOMAIN, b"pkgs.example"),))
    mirror = DomainSet((Pattern(EXACT, b"mirror.example.org"),))
    f = str(DATA / "domain-allowlist.json")
    texts = [r.origin.text for r in g.rules]

    def rule(sid, action, app, names, msg):
        return StatefulRule(action, match, Origin("stateful", "package-hosts", str(sid), f,
                                                  text=texts[sid - 1]),
                            app=app, flow_dir="to_server", established=True, names=names,
                            priority=1, sid=sid, msg=msg)

    assert g.rules == [
        rule(1, "pass", "tls", (NameCond("tls.sni", pkgs),), "matching TLS allowlisted FQDNs"),
        rule(2, "pass", "tls", (NameCond("tls.sni", mirror),), "matching TLS allowlisted FQDNs"),
        rule(3, "pass", "http", (NameCond("http.host", pkgs),),
             "matching HTTP allowlisted FQDNs"),
        rule(4, "pass", "http", (NameCond("http.host", mirror),),
             "matching HTTP allowlisted FQDNs"),
        rule(5, "drop", "tls", (), "not matching any TLS allowlisted FQDNs"),
        rule(6, "drop", "http", (), "not matching any HTTP allowlisted FQDNs"),
    ]
    assert texts[0] == (
        'pass tls $HOME_NET any -> $EXTERNAL_NET any (ssl_state:client_hello; tls.sni; '
        'dotprefix; content:".pkgs.example"; nocase; endswith; msg:"matching TLS allowlisted '
        'FQDNs"; priority:1; flow:to_server, established; sid:1; rev:1;)')


# Rule groups and the Suricata rules AWS says it generates for them, quoted from
# https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-examples.html
# ("Stateful rules examples: domain list rules").
AWS_DOC_DOMAIN_LISTS = [
    ({"Targets": ["evil.com"], "TargetTypes": ["TLS_SNI", "HTTP_HOST"],
      "GeneratedRulesType": "DENYLIST"}, """\
drop tls $HOME_NET any -> $EXTERNAL_NET any (ssl_state:client_hello; tls.sni; content:"evil.com"; startswith; nocase; endswith; msg:"matching TLS denylisted FQDNs"; priority:1; flow:to_server, established; sid:1; rev:1;)
drop http $HOME_NET any -> $EXTERNAL_NET any (http.host; content:"evil.com"; startswith; endswith; msg:"matching HTTP denylisted FQDNs"; priority:1; flow:to_server, established; sid:2; rev:1;)
"""),
    ({"Targets": [".amazon.com", "example.com"], "TargetTypes": ["HTTP_HOST"],
      "GeneratedRulesType": "ALLOWLIST"}, """\
pass http $HOME_NET any -> $EXTERNAL_NET any (http.host; dotprefix; content:".amazon.com"; endswith; msg:"matching HTTP allowlisted FQDNs"; priority:1; flow:to_server, established; sid:1; rev:1;)
pass http $HOME_NET any -> $EXTERNAL_NET any (http.host; content:"example.com"; startswith; endswith; msg:"matching HTTP allowlisted FQDNs"; priority:1; flow:to_server, established; sid:2; rev:1;)
drop http $HOME_NET any -> $EXTERNAL_NET any (http.header_names; content:"|0d 0a|"; startswith; msg:"not matching any HTTP allowlisted FQDNs"; priority:1; flow:to_server, established; sid:3; rev:1;)
"""),
    ({"Targets": [".amazon.com", "example.com"], "TargetTypes": ["TLS_SNI"],
      "GeneratedRulesType": "ALLOWLIST"}, """\
pass tls $HOME_NET any -> $EXTERNAL_NET any (ssl_state:client_hello; tls.sni; dotprefix; content:".amazon.com"; nocase; endswith; msg:"matching TLS allowlisted FQDNs"; priority:1; flow:to_server, established; sid:1; rev:1;)
pass tls $HOME_NET any -> $EXTERNAL_NET any (ssl_state:client_hello; tls.sni; content:"example.com"; startswith; nocase; endswith; msg:"matching TLS allowlisted FQDNs"; priority:1; flow:to_server, established; sid:2; rev:1;)
drop tls $HOME_NET any -> $EXTERNAL_NET any (msg:"not matching any TLS allowlisted FQDNs"; priority:1; ssl_state:client_hello; flow:to_server, established; sid:3; rev:1;)
"""),
]


def rule_group(rules_source: dict, **rule_group: object) -> dict:
    return {"RuleGroup": {"RulesSource": rules_source, **rule_group},
            "RuleGroupResponse": {"RuleGroupArn": "arn:aws:network-firewall:us-east-1:"
                                                  "111122223333:stateful-rulegroup/doc",
                                  "RuleGroupName": "doc", "RuleGroupId": "x"}}


@pytest.mark.parametrize("source,text", AWS_DOC_DOMAIN_LISTS)
def test_domain_list_text_is_what_aws_documents(source, text):
    [g] = aws.load(rule_group({"RulesSourceList": source}), "doc.json").stateful
    assert g.rule_order == "default_action_order"      # AWS's default when not given
    assert [r.origin.text for r in g.rules] == text.splitlines()
    assert [r.sid for r in g.rules] == list(range(1, len(g.rules) + 1))


def test_domain_list_rules_read_back_by_the_suricata_parser():
    # each rule built for a domain list is what egressd's Suricata reader makes of the
    # text AWS generates for it (mixed case and a trailing dot normalized first)
    variables = suricata.default_variables(net("192.0.2.0/24"))
    for kind in ("ALLOWLIST", "DENYLIST", "REJECTLIST", "ALERTLIST"):
        rules = aws.domain_list_rules([".pkgs.example", "Mirror.Example.org."],
                                      ["HTTP_HOST", "TLS_SNI"], kind, variables, "f", "g")
        for r in rules:
            [read] = suricata.parse_rules(r.origin.text, "f", variables, "g")
            assert replace(read, origin=replace(read.origin, line=None)) == r


def test_reject_and_alert_lists():
    for kind, action in (("REJECTLIST", "reject"), ("ALERTLIST", "alert")):
        source = {"Targets": [".pkgs.example"], "TargetTypes": ["TLS_SNI", "HTTP_HOST"],
                  "GeneratedRulesType": kind}
        [g] = aws.load(rule_group({"RulesSourceList": source}), "doc.json").stateful
        # no catch-all rule: only matching names are rejected / alerted
        assert [(r.action, r.app, r.names[0].buffer) for r in g.rules] == [
            (action, "tls", "tls.sni"), (action, "http", "http.host")]
        assert all(r.origin.text.startswith(f"{action} ") for r in g.rules)


# --- standard stateful rules and rule strings --------------------------------------------------

def test_stateful_rules_render_and_parse():
    home = net("192.0.2.0/24")
    p = load("stateful-rules.json", home_net=home)
    [g] = p.stateful
    assert (g.name, g.rule_order) == ("five-tuple", "strict_order")
    [tls, admin, reject, dns] = g.rules
    assert [r.origin.text for r in g.rules] == [
        ('pass tls $HOME_NET ANY -> $EXTERNAL_NET 443 (msg:"package hosts"; tls.sni; '
         'content:"pkgs.example"; nocase; endswith; flow:to_server,established; sid:100;)'),
        ('drop tcp 192.0.2.0/24 ANY <> [203.0.113.0/24,198.51.100.7] [22,3389] '
         '(msg:"remote admin"; sid:101;)'),
        'reject tcp $HOME_NET ANY -> ANY 1024:65535 (sid:102;)',
        'alert udp $HOME_NET ANY -> $EXTERNAL_NET 53 (msg:"outside resolver"; sid:103; rev:2;)',
    ]
    assert [(r.action, r.sid, r.origin.ident, r.origin.line, r.origin.group) for r in g.rules] \
        == [("pass", 100, "100", None, "five-tuple"), ("drop", 101, "101", None, "five-tuple"),
            ("reject", 102, "102", None, "five-tuple"), ("alert", 103, "103", None, "five-tuple")]
    assert (tls.app, tls.match.src, tls.match.dst, tls.match.dport) == (
        "tls", home, external(home), ((443, 443),))
    assert tls.flow_dir == "to_server" and tls.established is True
    assert tls.names[0].buffer == "tls.sni" and tls.msg == "package hosts"
    assert (admin.match.src, admin.match.dst, admin.match.dport, admin.match.bidirectional) == (
        home, net("203.0.113.0/24", "198.51.100.7/32"), ((22, 22), (3389, 3389)), True)
    assert reject.match == Match(protocols=frozenset({6}), src=home, dport=((1024, 65535),))
    assert (dns.match.protocols, dns.match.dport, dns.rev) == (frozenset({17}), ((53, 53),), 2)


def test_stateful_rules_aws_doc_example():
    # https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-examples.html
    # ("Stateful rules examples: standard stateful rule groups").  The page prints the
    # result as `(msg:this is a stateful drop rule; sid:1234;)`, dropping the quotes its
    # JSON gives the setting; Suricata refuses an unquoted msg, and AWS passes settings
    # through, so the quotes stay.
    source = {"StatefulRules": [{
        "Action": "DROP",
        "Header": {"Protocol": "HTTP", "Source": "$HOME_NET", "SourcePort": "ANY",
                   "Direction": "ANY", "Destination": "$EXTERNAL_NET", "DestinationPort": "ANY"},
        "RuleOptions": [{"Keyword": "msg", "Settings": ["\"this is a stateful drop rule\""]},
                        {"Keyword": "sid", "Settings": ["1234"]}]}]}
    aws_doc = "drop http $HOME_NET ANY <> $EXTERNAL_NET ANY (msg:this is a stateful drop rule; sid:1234;)"
    [g] = aws.load(rule_group(source), "doc.json").stateful
    [r] = g.rules
    assert r.origin.text == aws_doc.replace("msg:this is a stateful drop rule",
                                            'msg:"this is a stateful drop rule"')
    assert (r.action, r.app, r.sid, r.match.bidirectional) == ("drop", "http", 1234, True)


def test_rules_string_with_rule_variables():
    policy_home = net("10.0.0.0/8")
    f = str(DATA / "rules-string.json")
    p = load("rules-string.json", home_net=policy_home)
    [g] = p.stateful
    # a bare RuleGroup (create-rule-group input) is named after its file
    assert (g.name, g.arn, g.rule_order) == ("rules-string", "", "strict_order")
    [tls, drop] = g.rules
    web = ((80, 80), (443, 443), (8000, 8080))
    assert (tls.match.src, tls.match.dst, tls.match.dport) == (
        net("192.0.2.0/24"), net("203.0.113.0/24", "2001:db8:1::/48"), web)
    assert tls.names == (NameCond("tls.sni", DomainSet((Pattern(DOMAIN, b"pkgs.example"),))),)
    # the group's HOME_NET does not move EXTERNAL_NET, which inherits the policy's:
    # https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-limitations-caveats.html
    assert drop.match.dst == external(policy_home) != external(net("192.0.2.0/24"))
    assert drop.match.src == net("192.0.2.0/24") and drop.match.dport == web
    assert [(r.sid, r.origin.file, r.origin.group, r.origin.line) for r in g.rules] == [
        (1, f, "rules-string", None), (2, f, "rules-string", None)]


def test_rule_group_without_home_net_uses_the_policy_one():
    policy_home = net("198.51.100.0/24")
    data = doc("domain-allowlist.json")
    del data["RuleGroup"]["RuleVariables"]
    [g] = aws.load(data, "x.json", home_net=policy_home).stateful
    assert g.rules[0].match == Match(protocols=frozenset({6}), src=policy_home,
                                     dst=external(policy_home))


# --- firewall policies ----------------------------------------------------------------

def test_firewall_policy_strict_order():
    f = str(DATA / "firewall-policy.json")
    arn = "arn:aws:network-firewall:us-east-1:111122223333:"
    assert load("firewall-policy.json") == Policy(
        sources=[f],
        home_net=net("192.0.2.0/24", "198.51.100.0/24"),
        stateless_default="forward",
        stateless_fragment_default="drop",
        rule_order="strict_order",
        stateful_defaults=("drop_established", "alert_established"),
        references=[Reference(arn + "stateless-rulegroup/egress-stateless", "stateless", 10, f),
                    Reference(arn + "stateful-rulegroup/package-hosts", "stateful", 100, f),
                    Reference(arn + "stateful-rulegroup/five-tuple", "stateful", 200, f)])


def test_bare_firewall_policy_default_order():
    p = aws.load({"StatelessDefaultActions": ["aws:pass"],
                  "StatelessFragmentDefaultActions": ["aws:drop"],
                  "StatefulRuleGroupReferences": [
                      {"ResourceArn": "arn:aws:network-firewall:us-east-1:111122223333:"
                                      "stateful-rulegroup/a",
                       "Override": {"Action": "DROP_TO_ALERT"}}]}, "p.json")
    assert (p.stateless_default, p.stateless_fragment_default, p.rule_order,
            p.stateful_defaults, p.home_net) == ("pass", "drop", "default_action_order", (), None)
    assert [(r.kind, r.priority) for r in p.references] == [("stateful", 0)]


# --- Suricata validates what we generate ------------------------------------------------

MINI_YAML = """%YAML 1.1
---
vars:
  address-groups:
    HOME_NET: "[192.0.2.0/24]"
    EXTERNAL_NET: "!$HOME_NET"
"""


def test_generated_rules_are_valid_suricata(tmp_path):
    texts: list[str] = []
    groups = [g for name in ("domain-allowlist.json", "stateful-rules.json")
              for g in load(name).stateful]
    for source, _ in AWS_DOC_DOMAIN_LISTS:
        groups += aws.load(rule_group({"RulesSourceList": source}), "doc.json").stateful
    for kind in ("REJECTLIST", "ALERTLIST", "DENYLIST"):
        groups += aws.load(rule_group({"RulesSourceList": {
            "Targets": [".pkgs.example", "mirror.example.org"],
            "TargetTypes": ["HTTP_HOST", "TLS_SNI"], "GeneratedRulesType": kind}}),
            "doc.json").stateful
    for k, g in enumerate(groups):
        # each group numbers its sids from 1; Suricata wants them unique in one file
        texts += [re.sub(r"sid:(\d+);", lambda m, k=k: f"sid:{k * 10000 + int(m[1])};",
                         r.origin.text) for r in g.rules]
    (tmp_path / "suricata.yaml").write_text(MINI_YAML)
    (tmp_path / "generated.rules").write_text("\n".join(texts) + "\n")
    run = subprocess.run(["suricata", "-T", "-v", "-c", str(tmp_path / "suricata.yaml"),
                          "-S", str(tmp_path / "generated.rules"), "-l", str(tmp_path)],
                         check=False, capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert f"{len(texts)} rules successfully loaded, 0 rules failed" in out, out


# --- errors name the field ------------------------------------------------------------

def _set(path: list, value):
    def change(d: dict) -> None:
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value
    return change


def _delete(path: list):
    def change(d: dict) -> None:
        for key in path[:-1]:
            d = d[key]
        del d[path[-1]]
    return change


SL = ["RuleGroup", "RulesSource", "StatelessRulesAndCustomActions", "StatelessRules"]
SLP = "RuleGroup.RulesSource.StatelessRulesAndCustomActions.StatelessRules"
DL = ["RuleGroup", "RulesSource", "RulesSourceList"]
SF = ["RuleGroup", "RulesSource", "StatefulRules"]
FP = ["FirewallPolicy"]
MANAGED = "arn:aws:network-firewall:us-east-1:aws-managed:stateful-rulegroup/ThreatSignaturesBotnetActionOrder"

ERRORS = [
    ("stateless-rulegroup.json", _set(SL + [2, "RuleDefinition", "Actions"],
                                      ["aws:pass", "aws:drop"]),
     f"{SLP}[2].RuleDefinition.Actions", "exactly one of aws:pass"),
    ("stateless-rulegroup.json", _set(SL + [0, "RuleDefinition", "Actions"],
                                      ["aws:pass", "Undefined"]),
     f"{SLP}[0].RuleDefinition.Actions", "'Undefined'"),
    ("stateless-rulegroup.json", _set(SL + [0, "RuleDefinition", "MatchAttributes", "IcmpType"],
                                      3),
     f"{SLP}[0].RuleDefinition.MatchAttributes.IcmpType", "unknown field"),
    ("stateless-rulegroup.json", _set(SL + [1, "Priority"], "5"),
     f"{SLP}[1].Priority", "integer"),
    ("stateless-rulegroup.json", _set(SL + [1, "Priority"], 10),
     f"{SLP}[1].Priority", "used twice"),
    ("stateless-rulegroup.json", _set(SL + [0, "RuleDefinition", "MatchAttributes", "Sources"],
                                      [{"AddressDefinition": "192.0.2.1/24"}]),
     f"{SLP}[0].RuleDefinition.MatchAttributes.Sources[0]", "not a CIDR"),
    ("stateless-rulegroup.json", _set(SL + [1, "RuleDefinition", "MatchAttributes", "TCPFlags"],
                                      [{"Flags": ["FIN"], "Masks": ["SYN"]}]),
     f"{SLP}[1].RuleDefinition.MatchAttributes.TCPFlags[0].Flags", "not in Masks"),
    ("stateless-rulegroup.json", _set(SL + [1, "RuleDefinition", "MatchAttributes", "TCPFlags"],
                                      [{"Flags": ["NS"]}]),
     f"{SLP}[1].RuleDefinition.MatchAttributes.TCPFlags[0].Flags[0]", "'FIN'"),
    ("stateless-rulegroup.json", _set(SL + [0, "RuleDefinition", "MatchAttributes",
                                            "DestinationPorts"],
                                      [{"FromPort": 443, "ToPort": 80}]),
     f"{SLP}[0].RuleDefinition.MatchAttributes.DestinationPorts[0]", "above ToPort"),
    ("stateless-rulegroup.json", _set(["RuleGroupResponse", "Type"], "STATEFUL"),
     "RuleGroupResponse.Type", "STATEFUL"),
    ("stateless-rulegroup.json", _delete(SL + [0, "RuleDefinition", "Actions"]),
     f"{SLP}[0].RuleDefinition.Actions", "missing"),
    ("domain-allowlist.json", _set(["RuleGroup", "RulesSource", "RulesString"], ""),
     "RuleGroup.RulesSource", "exactly one of"),
    ("domain-allowlist.json", _set(DL + ["Targets"], [".pkgs.example", "bad..example"]),
     "RuleGroup.RulesSource.RulesSourceList.Targets[1]", "empty label"),
    ("domain-allowlist.json", _set(DL + ["TargetTypes"], ["TLS_SNI", "DNS_QUERY"]),
     "RuleGroup.RulesSource.RulesSourceList.TargetTypes[1]", "AWS_ROUTE_53_RESOLVED_DOMAIN"),
    ("domain-allowlist.json", _set(DL + ["GeneratedRulesType"], "BLOCKLIST"),
     "RuleGroup.RulesSource.RulesSourceList.GeneratedRulesType", "ALLOWLIST"),
    ("domain-allowlist.json", _set(["RuleGroup", "ReferenceSets"], {"IPSetReferences": {
        "BETA": {"ReferenceArn": "arn:aws:ec2:us-east-1:111122223333:prefix-list/pl-1"}}}),
     "RuleGroup.ReferenceSets.IPSetReferences", "not supported"),
    ("domain-allowlist.json", _set(["RuleGroup", "RuleVariables", "IPSets", "HOME_NET"],
                                   {"Definition": ["192.0.2.0/24", "example.com"]}),
     "RuleGroup.RuleVariables.IPSets.HOME_NET.Definition[1]", "not a CIDR"),
    ("domain-allowlist.json", _set(["RuleGroup", "StatefulRuleOptions", "RuleOrder"],
                                   "STRICT"),
     "RuleGroup.StatefulRuleOptions.RuleOrder", "STRICT_ORDER"),
    ("rules-string.json", _set(["RuleVariables", "PortSets", "WEB_PORTS"],
                               {"Definition": ["443", "70000"]}),
     "RuleVariables.PortSets.WEB_PORTS.Definition[1]", "0-65535"),
    ("stateful-rules.json", _set(SF + [1, "Header", "Protocol"], "SCTP"),
     "RuleGroup.RulesSource.StatefulRules[1].Header.Protocol", "'TCP'"),
    ("stateful-rules.json", _set(SF + [0, "Action"], "ACCEPT"),
     "RuleGroup.RulesSource.StatefulRules[0].Action", "'PASS'"),
    ("stateful-rules.json", _set(SF + [3, "RuleOptions", 1, "Settings"], ["101"]),
     "RuleGroup.RulesSource.StatefulRules[3]", "duplicate sid 101"),
    ("stateful-rules.json", _set(SF + [2, "Header", "Direction"], "BACKWARD"),
     "RuleGroup.RulesSource.StatefulRules[2].Header.Direction", "'FORWARD'"),
    ("firewall-policy.json", _set(FP + ["StatefulEngineOptions", "RuleOrder"],
                                  "DEFAULT_ACTION_ORDER"),
     "FirewallPolicy.StatefulDefaultActions", "STRICT_ORDER"),
    ("firewall-policy.json", _set(FP + ["StatefulDefaultActions"],
                                  ["aws:drop_strict", "aws:drop_established"]),
     "FirewallPolicy.StatefulDefaultActions", "at most one"),
    ("firewall-policy.json", _set(FP + ["StatefulDefaultActions"], ["aws:pass_strict"]),
     "FirewallPolicy.StatefulDefaultActions[0]", "aws:drop_strict"),
    ("firewall-policy.json", _set(FP + ["StatefulRuleGroupReferences", 0, "ResourceArn"],
                                  MANAGED),
     "FirewallPolicy.StatefulRuleGroupReferences[0].ResourceArn", "AWS-managed"),
    ("firewall-policy.json", _set(FP + ["StatelessRuleGroupReferences", 0, "ResourceArn"],
                                  "arn:aws:network-firewall:us-east-1:111122223333:"
                                  "stateful-rulegroup/package-hosts"),
     "FirewallPolicy.StatelessRuleGroupReferences[0].ResourceArn", "referenced as stateless"),
    ("firewall-policy.json", _delete(FP + ["StatefulRuleGroupReferences", 1, "Priority"]),
     "FirewallPolicy.StatefulRuleGroupReferences[1].Priority", "STRICT_ORDER"),
    ("firewall-policy.json", _set(FP + ["StatefulRuleGroupReferences", 1, "Priority"], 100),
     "FirewallPolicy.StatefulRuleGroupReferences[1].Priority", "used twice"),
    ("firewall-policy.json", _set(FP + ["TLSInspectionConfigurationArn"],
                                  "arn:aws:network-firewall:us-east-1:111122223333:"
                                  "tls-configuration/inspect"),
     "FirewallPolicy.TLSInspectionConfigurationArn", "TLS inspection"),
    ("firewall-policy.json", _set(FP + ["FirewallRuleGroupReferences"], []),
     "FirewallPolicy.FirewallRuleGroupReferences", "unknown field"),
    ("firewall-policy.json", _set(FP + ["PolicyVariables", "RuleVariables", "HTTP_SERVERS"],
                                  {"Definition": ["192.0.2.10/32"]}),
     "FirewallPolicy.PolicyVariables.RuleVariables.HTTP_SERVERS", "only set HOME_NET"),
    ("firewall-policy.json", _set(FP + ["StatelessDefaultActions"], ["aws:pass", "aws:drop"]),
     "FirewallPolicy.StatelessDefaultActions", "exactly one of"),
    ("firewall-policy.json", _set(FP + ["StatelessFragmentDefaultActions"],
                                  ["aws:drop", "Undefined"]),
     "FirewallPolicy.StatelessFragmentDefaultActions", "'Undefined'"),
    ("firewall-policy.json", _delete(FP + ["StatelessDefaultActions"]),
     "FirewallPolicy.StatelessDefaultActions", "missing"),
]


@pytest.mark.parametrize("name,change,where,reason", ERRORS,
                         ids=[f"{e[0]}:{e[2]}" for e in ERRORS])
def test_errors_name_the_field(name, change, where, reason):
    data = copy.deepcopy(doc(name))
    change(data)
    with pytest.raises(PolicyError) as e:
        load(name, data)
    assert e.value.where == where
    assert reason in e.value.reason
    assert str(e.value).startswith(str(DATA / name) + ": " + where + ": ")


def test_suricata_errors_are_placed_in_the_json():
    data = doc("stateful-rules.json")
    data["RuleGroup"]["RulesSource"]["StatefulRules"][1]["RuleOptions"].insert(
        0, {"Keyword": "ja3.hash"})
    with pytest.raises(PolicyError) as e:
        load("stateful-rules.json", data)
    assert e.value.where.startswith("RuleGroup.RulesSource.StatefulRules[1]")
    assert "ja3.hash" in str(e.value)
    data = doc("rules-string.json")
    data["RulesSource"]["RulesString"] += "drop tcp any any -> any any (ja3.hash; sid:3;)\n"
    with pytest.raises(PolicyError) as e:
        load("rules-string.json", data)
    assert e.value.where.startswith("RulesSource.RulesString, ")
    assert "3" in e.value.where and "ja3.hash" in str(e.value)


def test_resolved_domain_target_type() -> None:
    """AWS_ROUTE_53_RESOLVED_DOMAIN in a domain list (route53-resolved-ip-validation-rules):
    one rule of the list's action on IP traffic to addresses resolved for the targets,
    equal to what its Suricata text parses to, and no extra drop rule in an allowlist."""
    v = suricata.default_variables()
    rules = aws.domain_list_rules([".pkgs.example", "a.test"], ["AWS_ROUTE_53_RESOLVED_DOMAIN"],
                                  "ALLOWLIST", v, "f.json", "g")
    assert len(rules) == 1
    r = rules[0]
    assert (r.action, r.app, r.match.protocols) == ("pass", None, None)
    assert r.resolved == DomainSet((Pattern(DOMAIN, b"pkgs.example"), Pattern(EXACT, b"a.test")))
    assert replace(suricata.parse_rules(r.origin.text, "f.json", v, "g")[0], origin=r.origin) == r
