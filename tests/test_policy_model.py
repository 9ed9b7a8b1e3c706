"""The YAML policy file (rules.model), detection by content and merging (rules.load)."""
import json
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

from egressd.rules import addr, load, model
from egressd.rules.domains import normalize, set_matches
from egressd.rules.policy import (
    DEFAULT_OPTIONS, DOMAIN, EXACT, Options, PolicyError, StatefulGroup, StatelessGroup,
)

# DESIGN.md "Policy": the minimal file, exactly as written there.
DESIGN_EXAMPLE = """\
version: 1
home_net: [10.0.0.0/8]
dns_firewall:
  rules:
    - priority: 100
      domains: [c2.example.net]        # or domain_list_file: blocked.txt
      action: block                    # allow | block | alert
      response: nxdomain               # nodata | nxdomain | override (+ override_cname, ttl)
network_firewall:
  rule_order: strict_order             # or default_action_order
  stateful_default_actions: [drop_established]
  rule_groups:
    - domain_list: {targets: [.pkgs.example], target_types: [tls_sni, http_host], type: allowlist}
    - aws_rule_group_file: egress-rulegroup.json
"""

ACCOUNT = "arn:aws:network-firewall:eu-west-1:111122223333"


def rule_group_json(name: str, rules: str, *, strict: bool = True, stateless: bool = False) -> dict:
    """A minimal `aws network-firewall describe-rule-group` response."""
    if stateless:
        source = {"StatelessRulesAndCustomActions": {"StatelessRules": [{
            "Priority": 1, "RuleDefinition": {
                "Actions": ["aws:drop"],
                "MatchAttributes": {"Protocols": [17], "DestinationPorts": [
                    {"FromPort": 53, "ToPort": 53}]}}}]}}
        group = {"RulesSource": source}
    else:
        group = {"RulesSource": {"RulesString": rules}}
        if strict:
            group["StatefulRuleOptions"] = {"RuleOrder": "STRICT_ORDER"}
    kind = "stateless" if stateless else "stateful"
    return {"RuleGroup": group,
            "RuleGroupResponse": {"RuleGroupArn": f"{ACCOUNT}:{kind}-rulegroup/{name}",
                                  "RuleGroupName": name,
                                  "Type": "STATELESS" if stateless else "STATEFUL"}}


PASS_HTTPS = 'pass tcp $HOME_NET any -> $EXTERNAL_NET 443 (msg:"https"; sid:10; rev:1;)'


def write(tmp: Path, name: str, content: str | dict) -> str:
    path = tmp / name
    path.write_text(json.dumps(content) if isinstance(content, dict) else content)
    return str(path)


def yaml_policy(tmp: Path, body: str, name: str = "policy.yaml") -> str:
    return write(tmp, name, textwrap.dedent(body))


def load_yaml(body: str, file: str = "p.yaml"):
    return model.load(textwrap.dedent(body), file)


# --- the DESIGN.md example


def test_design_example_loads(tmp_path):
    write(tmp_path, "egress-rulegroup.json", rule_group_json("egress", PASS_HTTPS))
    pol = load.load_policies([write(tmp_path, "policy.yaml", DESIGN_EXAMPLE)])
    assert pol.home_net == addr.cidrs(["10.0.0.0/8"])
    (dns,) = pol.dns_firewall
    assert (dns.priority, dns.action, dns.response) == (100, "block", "nxdomain")
    assert dns.domains.patterns[0].kind == EXACT
    assert pol.rule_order == "strict_order" and pol.stateful_defaults == ("drop_established",)
    allow, egress = pol.stateful
    assert (allow.priority, egress.priority) == (1, 2)          # the order written
    assert {r.app for r in allow.rules} == {"tls", "http"}
    names = {p for r in allow.rules for c in r.names for p in c.names.patterns}
    assert {(p.kind, p.value) for p in names} == {(DOMAIN, b"pkgs.example")}
    # the domain list's $HOME_NET is the file's home_net
    assert all(r.match.src == addr.cidrs(["10.0.0.0/8"]) for r in allow.rules)
    assert egress.arn.endswith("stateful-rulegroup/egress") and egress.rules[0].sid == 10
    assert egress.rules[0].match.src == addr.cidrs(["10.0.0.0/8"])   # and the rule group's
    # what the file leaves out: AWS's and egressd's defaults
    assert pol.stateless == [] and pol.stateless_default == "forward"
    assert pol.options == DEFAULT_OPTIONS and pol.nacl is None and not pol.security_group


# --- errors point at the line and field


def y(*lines: str) -> str:
    return "\n".join(lines) + "\n"


NACL_443 = "{rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 443}"
ERRORS = [
    # (file, where, part of the reason)
    (y("version: 1", "nacl:", "  outbond: []"), "line 3, nacl.outbond", "unknown field 'outbond'"),
    (y("home_net: [10.0.0.0/8]"), "line 1, version", "required field 'version'"),
    (y("version: 2"), "line 1, version", "not supported"),
    (y("version: true"), "line 1, version", "not supported"),
    (y("version: 1", "home_net:", "  - 10.0.0.0/8", "  - 10.0.0.1/8"), "line 4, home_net[1]",
     "not a CIDR block"),
    (y("version: 1", "nacl:", "  outbound:", f"    - {NACL_443}",
       "    - {rule: 110, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 70000}"),
     "line 5, nacl.outbound[1].ports", "0-65535"),
    (y("version: 1", "nacl:", "  inbound:", "    - rule: 100", "      action: allow",
       "      protocol: icmp", "      cidr: 0.0.0.0/0", "      ports: 8"),
     "line 8, nacl.inbound[0].ports", "only to protocol tcp or udp"),
    (y("version: 1", "nacl:", "  outbound:",
       "    - {rule: 5, action: deny, protocol: all, cidr: '::/0'}",
       "    - {rule: 5, action: allow, protocol: all, cidr: '::/0'}"),
     "line 5, nacl.outbound[1].rule", "already used on line 4"),
    (y("version: 1", "nacl:", "  outbound:",
       "    - {rule: 0, action: deny, protocol: all, cidr: '::/0'}"),
     "line 4, nacl.outbound[0].rule", "greater than or equal to 1"),
    (y("version: 1", "security_group:", "  egress:", "    - {protocol: tcpp, cidr: 0.0.0.0/0}"),
     "line 4, security_group.egress[0].protocol", "not a protocol"),
    (y("version: 1", "dns_firewall:", "  rules:", "    - priority: 1", "      action: block",
       "      domains:", "        - ok.example", "        - '*bad.example'"),
     "line 8, dns_firewall.rules[0].domains[1]", "not a DNS Firewall domain"),
    (y("version: 1", "dns_firewall:", "  rules:",
       "    - {priority: 1, action: allow, domains: [a.example], response: nxdomain}"),
     "line 4, dns_firewall.rules[0].response", "only to action: block"),
    (y("version: 1", "dns_firewall:", "  rules:",
       "    - {priority: 1, action: block, domains: [a.example], response: override}"),
     "line 4, dns_firewall.rules[0]", "needs override_cname and override_ttl"),
    (y("version: 1", "dns_firewall:", "  rules:",
       "    - {priority: 1, action: block, domains: [a.x]}",
       "    - {priority: 1, action: alert, domains: [b.x]}"),
     "line 5, dns_firewall.rules[1].priority", "already used"),
    (y("version: 1", "dns_firewall:", "  rules:",
       "    - {priority: 1, action: alert, domains: [a.x], query_types: [A, AAA]}"),
     "line 4, dns_firewall.rules[0].query_types[1]", "not a DNS Firewall query type"),
    (y("version: 1", "dns_firewall:", "  rules:", "    - priority: 1", "      action: block",
       "      domain_list_file: missing.txt"),
     "line 6, dns_firewall.rules[0].domain_list_file", "cannot read"),
    (y("version: 1", "network_firewall:", "  stateful_default_actions: [drop_strict]"),
     "line 3, network_firewall.stateful_default_actions", "strict_order"),
    (y("version: 1", "network_firewall:", "  rule_order: strict_order",
       "  stateful_default_actions: [drop_strict, drop_established]"),
     "line 4, network_firewall.stateful_default_actions", "at most one"),
    (y("version: 1", "network_firewall:", "  rule_groups:",
       "    - suricata: 'alert ip any any -> any any (sid:1;)'", "      suricata_file: x.rules"),
     "line 4, network_firewall.rule_groups[0]", "exactly one of"),
    (y("version: 1", "network_firewall:", "  rule_groups:", "    - domain_list:",
       "        targets: [ok.example, 'bad example']", "        target_types: [tls_sni]",
       "        type: allowlist"),
     "line 5, network_firewall.rule_groups[0].domain_list.targets[1]", "white space"),
    (y("version: 1", "network_firewall:", "  stateless_rule_groups:", "    - priority: 1",
       "      rules:",
       "        - {priority: 1, action: pass, tcp_flags: {flags: [SYN], masks: [ACK]}}"),
     "line 6, network_firewall.stateless_rule_groups[0].rules[0].tcp_flags.flags",
     "outside masks"),
    (y("version: 1", "network_firewall:", "  stateless_rule_groups:", "    - priority: 1",
       "      rules:", "        - {priority: 1, action: forward_to_sfe}"),
     "line 6, network_firewall.stateless_rule_groups[0].rules[0].action", "'forward'"),
    (y("version: 1", "engine:", "  ech: block"), "line 3, engine.ech", "'pass', 'alert' or 'drop'"),
    (y("version: 1", "engine: {name_wait_packets: 0}"), "line 2, engine.name_wait_packets",
     "greater than or equal to 1"),
]


@pytest.mark.parametrize("text, where, reason", ERRORS)
def test_errors_name_line_and_field(tmp_path, text, where, reason):
    with pytest.raises(PolicyError) as e:
        model.load(text, str(tmp_path / "p.yaml"))
    assert e.value.file == str(tmp_path / "p.yaml")
    assert e.value.where == where
    assert reason in e.value.reason


@pytest.mark.parametrize("text, where, reason", [
    (y("version: 1", "nacl: [", "  {rule: 1"), "line 4", "expected"),
    (y("version: 1", "nacl:", "  outbound: []", "  outbound: []"), "line 4",
     "duplicate key 'outbound'"),
    (y("- version: 1"), "line 1", "YAML mapping"),
])
def test_yaml_syntax_errors_name_the_line(text, where, reason):
    with pytest.raises(PolicyError) as e:
        model.load(text, "p.yaml")
    assert e.value.where == where and reason in e.value.reason


def test_inline_suricata_error_names_the_yaml_line():
    text = y("version: 1", "network_firewall:", "  rule_groups:", "    - suricata: |",
             "        alert ip any any -> any any (sid:1;)",
             "        alert ip any any -> any any (sid:2; no_such_keyword;)")
    with pytest.raises(PolicyError) as e:
        model.load(text, "p.yaml")
    assert e.value.where.startswith("line 6")


# --- each section's conversion


def test_nacl_rules_per_direction():
    pol = load_yaml("""\
        version: 1
        nacl:
          outbound:
            - {rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 443}
            - {rule: 32766, action: deny, protocol: -1, cidr: "::/0"}
          inbound:
            - {rule: 100, action: allow, protocol: 6, cidr: 0.0.0.0/0, ports: 1024-65535}
        """)
    out443, deny, inb = pol.nacl
    assert (out443.number, out443.direction, out443.allow) == (100, "outbound", True)
    # outbound entries judge the destination, inbound ones the source; ports: destination
    assert out443.match.dst == addr.cidrs(["0.0.0.0/0"]) and out443.match.src is None
    assert out443.match.protocols == {6} and out443.match.dport == ((443, 443),)
    assert (deny.allow, deny.match.protocols, deny.match.dport) == (False, None, None)
    assert inb.match.src == addr.cidrs(["0.0.0.0/0"]) and inb.match.dst is None
    assert inb.match.dport == ((1024, 65535),)
    assert (out443.origin.layer, out443.origin.ident, out443.origin.line) == ("nacl", "100", 4)
    assert "ports: 443" in out443.origin.text


def test_nacl_present_but_empty_is_implicit_deny_only():
    assert load_yaml("version: 1\nnacl: {}\n").nacl == []
    assert load_yaml("version: 1\n").nacl is None


def test_security_group_defaults_and_rules():
    pol = load_yaml("version: 1\nsecurity_group: {}\n")
    # absent egress: allow all (the default security group); absent ingress: none
    assert pol.security_group and pol.sg_egress is None and pol.sg_ingress == []
    pol = load_yaml("""\
        version: 1
        security_group:
          egress: [{protocol: udp, cidr: 10.0.0.2/32, ports: 53}]
          ingress: [{protocol: all, cidr: 10.1.0.0/16}]
        """)
    (eg,), (ing,) = pol.sg_egress, pol.sg_ingress
    assert eg.direction == "egress" and eg.match.dst == addr.cidrs(["10.0.0.2/32"])
    assert eg.match.protocols == {17} and eg.match.dport == ((53, 53),)
    assert ing.match.src == addr.cidrs(["10.1.0.0/16"]) and ing.match.protocols is None


def test_dns_firewall_rules(tmp_path):
    write(tmp_path, "allowed.txt", "# partners\npartner.example\n*.partner.example\n")
    pol = model.load(textwrap.dedent("""\
        version: 1
        dns_firewall:
          rules:
            - {priority: 10, name: partners, domain_list_file: allowed.txt, action: allow}
            - priority: 20
              domains: ['*.tracker.example']
              action: block
              response: override
              override_cname: sinkhole.example.
              override_ttl: 60
              query_types: [A, aaaa, TYPE65]
            - {priority: 30, domains: ['*'], action: block}
        """), str(tmp_path / "p.yaml"))
    allow, override, catch_all = pol.dns_firewall
    assert allow.action == "allow" and allow.origin.group == "partners"
    assert set_matches(allow.domains, b"partner.example")
    assert set_matches(allow.domains, b"www.partner.example")
    assert (override.response, override.override_name, override.override_ttl) == \
        ("override", "sinkhole.example.", 60)
    assert override.qtypes == {1, 28, 65}
    assert not set_matches(override.domains, b"tracker.example")
    assert (catch_all.response, catch_all.qtypes) == ("nodata", None)   # BLOCK's default
    assert set_matches(catch_all.domains, normalize("anything.example"))


def test_network_firewall_sections(tmp_path):
    write(tmp_path, "ssh.rules", "drop tcp $HOME_NET any -> $EXTERNAL_NET 22 (sid:7;)\n")
    write(tmp_path, "dns-rg.json", rule_group_json("udp53", "", stateless=True))
    pol = model.load(textwrap.dedent("""\
        version: 1
        home_net: [192.168.0.0/16]
        network_firewall:
          stateless_default_actions: pass
          stateless_fragment_default_actions: drop
          stateless_rule_groups:
            - priority: 5
              name: syn-only
              rules:
                - priority: 1
                  action: forward
                  protocols: [tcp, 17]
                  sources: [192.168.1.0/24, 192.168.0.0/24]
                  destination_ports: [443, "8000-8080"]
                  tcp_flags: {flags: [SYN], masks: [SYN, ACK]}
          rule_groups:
            - name: inline
              suricata: |
                alert ip $HOME_NET any -> any any (msg:"seen"; sid:1;)
            - suricata_file: ssh.rules
            - aws_rule_group_file: dns-rg.json
        """), str(tmp_path / "p.yaml"))
    assert (pol.stateless_default, pol.stateless_fragment_default) == ("pass", "drop")
    assert pol.rule_order is None and pol.stateful_defaults is None   # unset until merged
    syn, udp53 = pol.stateless
    (rule,) = syn.rules
    assert (syn.name, syn.priority, rule.action) == ("syn-only", 5, "forward")
    assert rule.match.protocols == {6, 17}
    assert rule.match.src == addr.cidrs(["192.168.0.0/23"])
    assert rule.match.dport == ((443, 443), (8000, 8080))
    assert (rule.match.tcp_flags, rule.match.tcp_mask) == (0x02, 0x12)
    # an AWS rule group file takes the entry's place and priority
    assert isinstance(udp53, StatelessGroup) and udp53.priority == 3 and udp53.arn
    inline, ssh = pol.stateful
    assert isinstance(inline, StatefulGroup) and (inline.name, inline.priority) == ("inline", 1)
    assert inline.rules[0].origin.line == 19                    # the rule's YAML line
    assert inline.rules[0].match.src == addr.cidrs(["192.168.0.0/16"])
    assert (ssh.name, ssh.priority, ssh.rules[0].sid) == ("ssh.rules", 2, 7)
    assert ssh.rules[0].match.src == addr.cidrs(["192.168.0.0/16"])


def test_rule_group_priorities_all_or_none():
    with pytest.raises(PolicyError) as e:
        load_yaml("""\
            version: 1
            network_firewall:
              rule_order: strict_order
              rule_groups:
                - {priority: 10, suricata: 'alert ip any any -> any any (sid:1;)'}
                - {suricata: 'alert ip any any -> any any (sid:2;)'}
            """)
    assert e.value.where == "line 6, network_firewall.rule_groups[1]"


def test_firewall_policy_is_not_a_rule_group(tmp_path):
    write(tmp_path, "fp.json", {"FirewallPolicy": {
        "StatelessDefaultActions": ["aws:pass"], "StatelessFragmentDefaultActions": ["aws:pass"]}})
    with pytest.raises(PolicyError, match="firewall policy, not a rule group"):
        model.load("version: 1\nnetwork_firewall:\n  rule_groups:\n"
                   "    - aws_rule_group_file: fp.json\n", str(tmp_path / "p.yaml"))


def test_every_engine_option_can_be_written():
    assert set(model.Engine.model_fields) == {f.name for f in fields(Options)}


def test_engine_options():
    pol = load_yaml("""\
        version: 1
        engine:
          name_wait_packets: 4
          ech: drop
          sni_resolution: off
          quic_as_tls: true
        """)
    assert pol.options == Options(name_wait_packets=4, ech="drop", sni_resolution="off",
                                  quic_as_tls=True)


# --- detection by content, never by name


def test_each_format_is_detected_by_content(tmp_path):
    yml = write(tmp_path, "policy.json", "version: 1\nnacl: {}\n")
    js = write(tmp_path, "rules.yaml", rule_group_json("egress", PASS_HTTPS, strict=False))
    rules = write(tmp_path, "list.txt", "alert ip any any -> any any (sid:3;)\n")
    lst = write(tmp_path, "blocked.rules", "c2.example.net\n*.bad.example\n")
    assert load.load_file(yml).nacl == []
    assert load.load_file(js).stateful[0].arn.endswith("/egress")
    assert load.load_file(rules).stateful[0].rules[0].sid == 3
    assert load.load_file(lst).dns_firewall[0].action == "block"


@pytest.mark.parametrize("content, reason", [
    ("", "empty"),
    ("hello world, this is prose\n", "YAML policy"),
    ('{"Something": 1}', "describe-rule-group"),
    ('{"RuleGroup": {', "invalid JSON"),
])
def test_unrecognized_content(tmp_path, content, reason):
    path = write(tmp_path, "x", content)
    with pytest.raises(PolicyError) as e:
        load.load_file(path)
    assert e.value.file == path and reason in e.value.reason


def test_unreadable_files(tmp_path):
    with pytest.raises(PolicyError) as e:
        load.load_file(str(tmp_path / "nope.yaml"))
    assert e.value.where == "" and "cannot read" in e.value.reason
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PolicyError, match="UTF-8"):
        load.load_file(str(tmp_path / "bin"))


def test_yaml_syntax_error_is_reported_not_misdetected(tmp_path):
    with pytest.raises(PolicyError) as e:
        load.load_file(write(tmp_path, "p", "version: 1\nnacl: [\n"))
    assert e.value.where.startswith("line ")


# --- merging


def test_conflicting_setting_names_both_files(tmp_path):
    a = yaml_policy(tmp_path, y("version: 1", "network_firewall: {rule_order: strict_order}"),
                    "a.yaml")
    b = yaml_policy(tmp_path, y("version: 1",
                                "network_firewall: {rule_order: default_action_order}"), "b.yaml")
    with pytest.raises(PolicyError) as e:
        load.load_policies([a, b])
    assert e.value.file == b and a in e.value.reason and "rule_order" in e.value.reason


def test_same_setting_twice_and_lists_concatenate(tmp_path):
    a = yaml_policy(tmp_path, """\
        version: 1
        engine: {ech: alert}
        nacl:
          outbound: [{rule: 100, action: allow, protocol: all, cidr: 0.0.0.0/0}]
        """, "a.yaml")
    b = yaml_policy(tmp_path, """\
        version: 1
        engine: {ech: alert, name_wait_packets: 3}
        nacl:
          inbound: [{rule: 100, action: allow, protocol: all, cidr: 0.0.0.0/0}]
        """, "b.yaml")
    pol = load.load_policies([a, b])
    assert [r.direction for r in pol.nacl] == ["outbound", "inbound"]
    assert pol.options.ech == "alert" and pol.options.name_wait_packets == 3
    assert pol.options.name_wait_bytes == DEFAULT_OPTIONS.name_wait_bytes
    assert pol.sources == [a, b]


def test_engine_option_conflict(tmp_path):
    a = yaml_policy(tmp_path, "version: 1\nengine: {quic_as_tls: true}\n", "a.yaml")
    b = yaml_policy(tmp_path, "version: 1\nengine: {quic_as_tls: false}\n", "b.yaml")
    with pytest.raises(PolicyError, match="engine.quic_as_tls"):
        load.load_policies([a, b])


def test_duplicate_nacl_number_across_files(tmp_path):
    body = y("version: 1", "nacl:",
             "  outbound: [{rule: 7, action: allow, protocol: all, cidr: '::/0'}]")
    a, b = yaml_policy(tmp_path, body, "a.yaml"), yaml_policy(tmp_path, body, "b.yaml")
    with pytest.raises(PolicyError) as e:
        load.load_policies([a, b])
    assert e.value.file == b and a in e.value.reason


def test_home_net_of_one_file_is_home_net_of_the_others(tmp_path):
    a = yaml_policy(tmp_path, "version: 1\nhome_net: [172.31.0.0/16]\n", "a.yaml")
    b = write(tmp_path, "b.rules", "drop tcp $HOME_NET any -> any 22 (sid:1;)\n")
    pol = load.load_policies([b, a])
    assert pol.home_net == addr.cidrs(["172.31.0.0/16"])
    assert pol.stateful[0].rules[0].match.src == addr.cidrs(["172.31.0.0/16"])


def test_defaults_filled():
    pol = load.load_policies([])
    assert pol.home_net == addr.cidrs(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                       "fc00::/7"])
    assert (pol.rule_order, pol.stateless_default, pol.stateless_fragment_default,
            pol.stateful_defaults) == ("default_action_order", "forward", "forward", ())
    assert pol.options == DEFAULT_OPTIONS


def test_domain_list_file_runs_after_every_other_dns_rule(tmp_path):
    lst = write(tmp_path, "blocked.txt", "*.bad.example\n")
    a = yaml_policy(tmp_path, """\
        version: 1
        dns_firewall:
          rules:
            - {priority: 200, domains: [ok.bad.example], action: allow}
            - {priority: 100, domains: [x.example], action: alert}
        """)
    pol = load.load_policies([lst, a])
    assert sorted(r.priority for r in pol.dns_firewall) == [100, 200, 201]
    assert next(r for r in pol.dns_firewall if r.priority == 201).origin.file == lst


def test_rule_order_conflict_with_firewall_policy(tmp_path):
    fp = write(tmp_path, "fp.json", {                   # a bare create-firewall-policy input
        "StatelessDefaultActions": ["aws:forward_to_sfe"],
        "StatelessFragmentDefaultActions": ["aws:forward_to_sfe"]})
    y = yaml_policy(tmp_path, "version: 1\nnetwork_firewall:\n  rule_order: strict_order\n")
    with pytest.raises(PolicyError) as e:
        load.load_policies([fp, y])
    assert "rule_order" in e.value.reason and fp in e.value.reason


# --- firewall policy references


def firewall_policy(stateless: list[tuple[str, int]], stateful: list[tuple[str, int]]) -> dict:
    return {"FirewallPolicy": {
        "StatelessDefaultActions": ["aws:forward_to_sfe"],
        "StatelessFragmentDefaultActions": ["aws:drop"],
        "StatelessRuleGroupReferences": [{"ResourceArn": f"{ACCOUNT}:stateless-rulegroup/{n}",
                                          "Priority": p} for n, p in stateless],
        "StatefulRuleGroupReferences": [{"ResourceArn": f"{ACCOUNT}:stateful-rulegroup/{n}",
                                         "Priority": p} for n, p in stateful],
        "StatefulEngineOptions": {"RuleOrder": "STRICT_ORDER"},
        "StatefulDefaultActions": ["aws:drop_established"]},
        "FirewallPolicyResponse": {"FirewallPolicyName": "egress",
                                   "FirewallPolicyArn": f"{ACCOUNT}:firewall-policy/egress"}}


def test_references_resolved_by_arn(tmp_path):
    fp = write(tmp_path, "fp.json", firewall_policy([("udp53", 20)], [("web", 300), ("ssh", 100)]))
    files = [fp,
             write(tmp_path, "web.json", rule_group_json("web", PASS_HTTPS)),
             write(tmp_path, "ssh.json",
                   rule_group_json("ssh", "drop tcp any any -> any 22 (sid:2;)")),
             write(tmp_path, "udp.json", rule_group_json("udp53", "", stateless=True))]
    pol = load.load_policies(files)
    assert [(g.name, g.priority) for g in pol.stateful] == [("ssh", 100), ("web", 300)]
    assert [(g.name, g.priority) for g in pol.stateless] == [("udp53", 20)]
    assert pol.stateless_fragment_default == "drop"
    assert pol.stateful_defaults == ("drop_established",)


def test_missing_referenced_group_names_the_arn(tmp_path):
    fp = write(tmp_path, "fp.json", firewall_policy([], [("web", 1)]))
    with pytest.raises(PolicyError) as e:
        load.load_policies([fp])
    assert e.value.file == fp
    assert f"{ACCOUNT}:stateful-rulegroup/web" in e.value.reason
    assert "describe-rule-group" in e.value.reason


def test_unreferenced_group_is_an_error(tmp_path):
    fp = write(tmp_path, "fp.json", firewall_policy([], [("web", 1)]))
    web = write(tmp_path, "web.json", rule_group_json("web", PASS_HTTPS))
    extra = write(tmp_path, "extra.rules", "alert ip any any -> any any (sid:9;)\n")
    with pytest.raises(PolicyError) as e:
        load.load_policies([fp, web, extra])
    assert e.value.file == extra and "not referenced" in e.value.reason


def test_rule_group_order_must_match_policy(tmp_path):
    fp = write(tmp_path, "fp.json", firewall_policy([], [("web", 1)]))
    web = write(tmp_path, "web.json", rule_group_json("web", PASS_HTTPS, strict=False))
    with pytest.raises(PolicyError) as e:
        load.load_policies([fp, web])
    assert e.value.file == web
    assert "default_action_order" in e.value.reason and "strict_order" in e.value.reason


# --- policy check's summary


def test_describe(tmp_path):
    write(tmp_path, "egress-rulegroup.json", rule_group_json("egress", PASS_HTTPS))
    y = yaml_policy(tmp_path, DESIGN_EXAMPLE + textwrap.dedent("""\
        nacl:
          outbound: [{rule: 100, action: allow, protocol: all, cidr: 0.0.0.0/0}]
        security_group: {}
        """))
    lines = load.describe(load.load_policies([y]))
    text = "\n".join(lines)
    assert "home_net: 10.0.0.0/8" in lines
    assert "nacl: 1 outbound, 0 inbound rules, then deny everything else (*)" in lines
    assert "security group: egress allow all (AWS default); ingress 0 allow rules" in text
    assert "  priority 100: block nxdomain, 1 domains" in lines
    assert "stateless: 0 groups, 0 rules; default forward, fragments forward" in lines
    assert "rule order strict_order; default actions drop_established" in text
    assert "1 domain patterns" in text                     # .pkgs.example
    assert "engine: name_wait_packets=32" in text
