"""Suricata rules loader (rules/suricata.py).

Compared against things no one here wrote: the rules AWS documents that it generates
for domain lists, Suricata's own regression rules and their expected alerts, and
Suricata 7 itself (`suricata -T` on every fixture rule, and `suricata -r` on crafted
packets for the address and port semantics).
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import dpkt
import pytest
import yaml

from conftest import CORPUS
from helpers_pcap import Record, tshark_fields, write_pcap
from egressd.rules import addr, domains, suricata
from egressd.rules.policy import (CONTAINS, DOMAIN, EXACT, PREFIX, SUFFIX, DomainSet, NameCond,
                                  Pattern, PolicyError, StatefulRule)

SV = CORPUS / "suricata-verify"
HOME_NET_TEXT = "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7]"
VARS = suricata.default_variables()
HOME = VARS.ip_sets["HOME_NET"]
EXTERNAL = VARS.ip_sets["EXTERNAL_NET"]


def parse(text: str, **kw) -> list[StatefulRule]:
    return suricata.parse_rules(text, "t.rules", VARS, **kw)


def one(text: str) -> StatefulRule:
    (rule,) = parse(text)
    return rule


def refused(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as e:
        parse(text)
    return e.value


def cond(buffer: str, *patterns: tuple[str, bytes], negated: bool = False) -> NameCond:
    return NameCond(buffer, DomainSet(tuple(Pattern(k, v) for k, v in patterns)), negated)


@pytest.fixture(scope="session")
def suricata_bin() -> str:
    path = shutil.which("suricata")
    assert path, "suricata 7 is required (bookworm-backports); .ci/run installs it"
    return path


# --- the rules AWS generates for domain lists ------------------------------------
# Quoted from docs.aws.amazon.com/network-firewall/latest/developerguide/
# suricata-examples.html ("Stateful rules examples: domain list rules" and "allow
# traffic"): what Network Firewall generates for these RulesSourceList specifications.

AWS_TLS_ALLOWLIST = """\
pass tls $HOME_NET any -> $EXTERNAL_NET any (ssl_state:client_hello; tls.sni; dotprefix; content:".amazon.com"; nocase; endswith; msg:"matching TLS allowlisted FQDNs"; priority:1; flow:to_server, established; sid:1; rev:1;)
pass tls $HOME_NET any -> $EXTERNAL_NET any (ssl_state:client_hello; tls.sni; content:"example.com"; startswith; nocase; endswith; msg:"matching TLS allowlisted FQDNs"; priority:1; flow:to_server, established; sid:2; rev:1;)
drop tls $HOME_NET any -> $EXTERNAL_NET any (msg:"not matching any TLS allowlisted FQDNs"; priority:1; ssl_state:client_hello; flow:to_server, established; sid:3; rev:1;)
"""
AWS_HTTP_ALLOWLIST = """\
pass http $HOME_NET any -> $EXTERNAL_NET any (http.host; dotprefix; content:".amazon.com"; endswith; msg:"matching HTTP allowlisted FQDNs"; priority:1; flow:to_server, established; sid:1; rev:1;)
pass http $HOME_NET any -> $EXTERNAL_NET any (http.host; content:"example.com"; startswith; endswith; msg:"matching HTTP allowlisted FQDNs"; priority:1; flow:to_server, established; sid:2; rev:1;)
drop http $HOME_NET any -> $EXTERNAL_NET any (http.header_names; content:"|0d 0a|"; startswith; msg:"not matching any HTTP allowlisted FQDNs"; priority:1; flow:to_server, established; sid:3; rev:1;)
"""
AWS_DENYLIST = """\
drop tls $HOME_NET any -> $EXTERNAL_NET any (ssl_state:client_hello; tls.sni; content:"evil.com"; startswith; nocase; endswith; msg:"matching TLS denylisted FQDNs"; priority:1; flow:to_server, established; sid:1; rev:1;)
drop http $HOME_NET any -> $EXTERNAL_NET any (http.host; content:"evil.com"; startswith; endswith; msg:"matching HTTP denylisted FQDNs"; priority:1; flow:to_server, established; sid:2; rev:1;)
"""
AWS_SSM = ('pass tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"ssm."; '
           'ssl_state:client_hello; startswith; content:".amazonaws.com"; endswith; nocase; '
           'flow: to_server; sid:202308311;)')
AWS_HTTP_ACTION_ORDER = """\
drop tcp $HOME_NET any -> $EXTERNAL_NET 80 (msg:"Drop established TCP:80"; flow: from_client,established; sid:172190; priority:5; rev:1;)
pass http $HOME_NET any -> $EXTERNAL_NET 80 (http.host; dotprefix; content:".example.com"; endswith; msg:"Allowed HTTP domain"; priority:10; sid:172191; rev:1;)
pass tcp $HOME_NET any -> $EXTERNAL_NET 22 (msg:"Allow TCP 22"; sid:172192; rev:1;)
drop tcp $HOME_NET any -> $EXTERNAL_NET !80 (msg:"Drop All non-TCP:80";  sid:172193; priority:2; rev:1;)
"""


def _generated(rule: StatefulRule, action: str, app: str, sid: int, msg: str,
               names: tuple[NameCond, ...]) -> None:
    assert (rule.action, rule.app, rule.sid, rule.rev, rule.msg) == (action, app, sid, 1, msg)
    assert (rule.flow_dir, rule.established, rule.priority) == ("to_server", True, 1)
    assert rule.match.protocols == {6}
    assert (rule.match.src, rule.match.dst) == (HOME, EXTERNAL)
    assert rule.match.sport is rule.match.dport is None and not rule.match.bidirectional
    assert rule.names == names and rule.resolved is None


def test_aws_tls_allowlist() -> None:
    allow_domain, allow_exact, deny = parse(AWS_TLS_ALLOWLIST, group="g")
    msg = "matching TLS allowlisted FQDNs"
    _generated(allow_domain, "pass", "tls", 1, msg,
               (cond("tls.sni", (DOMAIN, b"amazon.com")),))
    _generated(allow_exact, "pass", "tls", 2, msg, (cond("tls.sni", (EXACT, b"example.com")),))
    _generated(deny, "drop", "tls", 3, "not matching any TLS allowlisted FQDNs", ())
    assert [r.origin.line for r in (allow_domain, allow_exact, deny)] == [1, 2, 3]
    assert allow_domain.origin.text == AWS_TLS_ALLOWLIST.splitlines()[0]
    o = allow_domain.origin
    assert (o.layer, o.group, o.ident, o.file) == ("stateful", "g", "1", "t.rules")


def test_aws_http_allowlist() -> None:
    allow_domain, allow_exact, deny = parse(AWS_HTTP_ALLOWLIST)
    msg = "matching HTTP allowlisted FQDNs"
    _generated(allow_domain, "pass", "http", 1, msg,
               (cond("http.host", (DOMAIN, b"amazon.com")),))
    _generated(allow_exact, "pass", "http", 2, msg,
               (cond("http.host", (EXACT, b"example.com")),))
    # http.header_names "starts with CRLF" holds for every parsed request
    _generated(deny, "drop", "http", 3, "not matching any HTTP allowlisted FQDNs", ())


def test_aws_denylist() -> None:
    tls, http = parse(AWS_DENYLIST)
    _generated(tls, "drop", "tls", 1, "matching TLS denylisted FQDNs",
               (cond("tls.sni", (EXACT, b"evil.com")),))
    _generated(http, "drop", "http", 2, "matching HTTP denylisted FQDNs",
               (cond("http.host", (EXACT, b"evil.com")),))


def test_aws_domain_semantics_on_names() -> None:
    """AWS: ".amazon.com" is amazon.com and its subdomains, "example.com" that name only
    (docs.aws.amazon.com/network-firewall/latest/APIReference/API_RulesSourceList.html)."""
    by_sid = {r.sid: r.names[0].names for r in parse(AWS_TLS_ALLOWLIST)[:2]}
    for name, amazon, example in [("amazon.com", True, False), ("www.amazon.com", True, False),
                                  ("a.b.amazon.com", True, False), ("notamazon.com", False, False),
                                  ("amazon.com.evil.net", False, False),
                                  ("example.com", False, True), ("www.example.com", False, False),
                                  ("WWW.Amazon.COM.", True, False), ("Example.com.", False, True)]:
        n = domains.normalize(name)
        assert domains.set_matches(by_sid[1], n) is amazon, name
        assert domains.set_matches(by_sid[2], n) is example, name


def test_aws_two_contents_are_anded() -> None:
    rule = one(AWS_SSM)
    assert rule.names == (cond("tls.sni", (PREFIX, b"ssm.")),
                          cond("tls.sni", (SUFFIX, b".amazonaws.com")))
    assert (rule.flow_dir, rule.established, rule.priority) == ("to_server", None, 3)


def test_aws_action_order_example() -> None:
    drop80, http, ssh, drop_not80 = parse(AWS_HTTP_ACTION_ORDER)
    assert (drop80.flow_dir, drop80.established, drop80.priority) == ("to_server", True, 5)
    assert drop80.match.dport == ((80, 80),) and drop80.app is None
    assert http.app == "http" and http.names == (cond("http.host", (DOMAIN, b"example.com")),)
    assert ssh.match.dport == ((22, 22),) and ssh.match.protocols == {6}
    assert drop_not80.match.dport == ((0, 79), (81, 65535))


# --- Suricata's regression rules ------------------------------------------------

# every rules file of the corpus: parsed (rule count), or refused (where, fragment)
CORPUS_RULES = {
    "bug-5758/test.rules": 1,
    "detect-dotprefix-01/test.rules": 2,
    "detect-dotprefix-02/test.rules": 2,
    "detect-dotprefix-03/test.rules": 1,
    "dns_dns-query_dns-detect-query-01/test.rules": 1,
    "dns_dns-query_dns-detect-query-02/test.rules": 2,
    "dns_dns-query_dns-detect-query-03/test.rules": 1,
    "ips_firewall-04-tls-sni-enforce/test.rules": 3,
    "ips_firewall-06-tls-sni-enforce/test.rules": 3,
    "tls_tls-client-hello-frag-01/test.rules": 1,
    "bug-7264-tcp-3whs-ack-data-tls-01/test.rules": 2,
    "bug-6402-01/test.rules": ("line 5, sid 5555", "keyword 'ip_proto'"),
    "bug-7199/test.rules": ("line 2, sid 2", "keyword 'http.uri'"),
    "bug-7851-01/test.rules": ("line 1, sid 1", "keyword 'bsize'"),
    "bug-814/test.rules": ("line 2, sid 1", "keyword 'http_method'"),
    "datasets-04-http-dns/test.rules": ("line 1, sid 1", "keyword 'dataset'"),
    "datasets-match-subdomain/test.rules": ("line 1, sid 1", "keyword 'dataset'"),
    "decode-teredo-01/test.rules": ("line 1, sid 3", "keyword 'flow.age'"),
    "detect-content-ends-with-negated-01/test.rules": ("line 1, sid 1", "keyword 'http.method'"),
    "dns_dns-query_dns-detect-query-04/test.rules": ("line 1, sid 1", "keyword 'pcre'"),
    "dns_dns-query_dns-detect-query-05/test.rules": ("line 3, sid 3", "keyword 'app-layer-event'"),
    "dns_dns-rcode/test.rules": ("line 2, sid 1", "keyword 'dns.rcode'"),
    "dns_dns-truncated-rname/test.rules": ("line 2, sid 224008", "keyword 'app-layer-event'"),
    "domain-keyword/test.rules": ("line 1, sid 1", "keyword 'domain'"),
    "firewall_ruletype-firewall-04-ruleset-vs-sni/firewall.rules":
        ("line 2, sid 101", "action 'accept:flow'"),
    "firewall_ruletype-firewall-05-ruleset-vs-sni/firewall.rules":
        ("line 4, sid 1011", "action 'accept:flow'"),
    "http-ipv6/test.rules": ("line 1, sid 2221028", "keyword 'app-layer-event'"),
    "quic-alerts/test.rules": ("line 1, sid 1", "keyword 'quic.cyu.hash'"),
    "quic-ietf/test.rules": ("line 1, sid 4", "keyword 'quic.sni'"),
    "quic-v2/test.rules": ("line 1, sid 4", "keyword 'quic.version'"),
    "rule-hooks_tls-handshake-01-ips-sni/test.rules":
        ("line 1, sid 21", "protocol 'tls:client_hello_done'"),
    "rule-hooks_tls-handshake-02-ips-sni-drop/test.rules":
        ("line 1, sid 21", "protocol 'tls:client_hello_done'"),
    "tls_tls-random/test.rules": ("line 1, sid 1", "keyword 'tls.random'"),
}


def test_corpus_table_covers_every_rules_file(corpus: Path) -> None:
    found = {str(p.relative_to(SV)) for p in SV.glob("*/*.rules")}
    assert found == set(CORPUS_RULES)


@pytest.mark.parametrize("name", sorted(CORPUS_RULES))
def test_corpus_rules(corpus: Path, name: str) -> None:
    path = SV / name
    expected = CORPUS_RULES[name]
    if isinstance(expected, int):
        policy = suricata.load(path.read_text(), str(path))
        (group,) = policy.stateful
        assert (group.name, group.priority, policy.sources) == (path.stem, 0, [str(path)])
        assert len(group.rules) == expected
        assert all(r.origin.group == path.stem for r in group.rules)
    else:
        with pytest.raises(PolicyError) as e:
            suricata.load(path.read_text(), str(path))
        where, fragment = expected
        assert (e.value.file, e.value.where) == (str(path), where)
        assert fragment in e.value.reason


def test_ips_firewall_sni_enforce(corpus: Path) -> None:
    text = (SV / "ips_firewall-04-tls-sni-enforce" / "test.rules").read_text()
    handshake, sni, rest = parse(text)
    assert handshake.origin.line == 3 and sni.origin.line == 7 and rest.origin.line == 11
    assert (handshake.action, handshake.match.protocols, handshake.match.dport,
            handshake.match.bidirectional, handshake.established) == (
        "pass", {6}, ((443, 443),), True, False)
    assert (sni.app, sni.established, sni.names) == (
        "tls", True, (cond("tls.sni", (CONTAINS, b"raw.githubusercontent.com")),))
    assert (rest.action, rest.match.protocols, rest.established, rest.flow_dir) == (
        "drop", None, None, None)


DNS_QUERY_TESTS = ["detect-dotprefix-01", "detect-dotprefix-02", "detect-dotprefix-03",
                   "dns_dns-query_dns-detect-query-01", "dns_dns-query_dns-detect-query-02",
                   "dns_dns-query_dns-detect-query-03"]


@pytest.mark.parametrize("name", DNS_QUERY_TESTS)
def test_dns_query_names_alert_as_suricata_expects(corpus: Path, tshark: str, name: str) -> None:
    """Each query of the capture (read by tshark) that a rule's names match is one
    alert; Suricata's test.yaml says how many alerts each sid must give."""
    folder = SV / name
    rules = parse((folder / "test.rules").read_text())
    queries = [domains.normalize(q) for q, response in
               tshark_fields(folder / "input.pcap", "dns.qry.name", "dns.flags.response")
               if q and response in ("0", "False")]
    assert queries
    checks = yaml.safe_load((folder / "test.yaml").read_text())["checks"]
    expected = {c["filter"]["match"]["alert.signature_id"]: c["filter"]["count"]
                for c in checks
                if set(c["filter"]["match"]) == {"event_type", "alert.signature_id"}}
    assert set(expected) == {r.sid for r in rules}
    for rule in rules:
        hits = sum(all(domains.set_matches(c.names, q) != c.negated for c in rule.names)
                   for q in queries)
        assert hits == expected[rule.sid], (name, rule.sid)


def test_negated_endswith_is_a_suffix_not_a_domain(corpus: Path) -> None:
    """detect-content-ends-with-negated-01 without its http.method/uri parts: a host
    that merely contains ".google.com" is not excluded by !".google.com" endswith."""
    rule = one('alert http $HOME_NET any -> any any (msg:"Test"; flow:established,to_server; '
               'http.host; content:!".google.com"; endswith; sid:1;)')
    (c,) = rule.names
    assert c == cond("http.host", (SUFFIX, b".google.com"), negated=True)
    assert not domains.set_matches(c.names, b"www.google.com.example.com")
    assert domains.set_matches(c.names, b"www.google.com")
    assert not domains.set_matches(c.names, b"google.com")   # no dotprefix: no apex


# --- what is refused ------------------------------------------------------------

GOOD_BEFORE = 'alert tls any any -> any any (tls.sni; content:"ok.example"; sid:100;)\n# comment\n'

# (protocol, options, keyword, whether Suricata 7 refuses it too: `domain` is Suricata 8's)
KEYWORDS = [
    ("tls", 'tls.sni; content:"a"; pcre:"/a/";', "pcre", False),
    ("tls", 'tls.sni; bsize:10; content:"a";', "bsize", False),
    ("tls", 'tls.sni; content:"a"; depth:5;', "depth", False),
    ("tls", 'tls.sni; content:"a"; offset:1;', "offset", False),
    ("tls", 'tls.sni; content:"a"; content:"b"; distance:0;', "distance", False),
    ("tls", 'tls.sni; content:"a"; content:"b"; within:5;', "within", False),
    ("tls", 'tls.sni; content:"a"; isdataat:1,relative;', "isdataat", False),
    ("tls", "flowbits:set,seen;", "flowbits", False),
    ("tls", "threshold:type limit, track by_src, count 1, seconds 60;", "threshold", False),
    ("tls", 'tls.cert_subject; content:"a";', "tls.cert_subject", False),
    ("tls", "tls.version:1.2;", "tls.version", False),
    ("tls", "noalert;", "noalert", False),
    ("tls", "tag:session,5,packets;", "tag", False),
    ("tls", "target:dest_ip;", "target", False),
    ("http", 'http.uri; content:"/";', "http.uri", False),
    ("http", 'http.method; content:"GET";', "http.method", False),
    ("http", 'content:"GET"; http_method;', "http_method", False),
    ("http", 'http.host; content:"a"; http.user_agent; content:"curl";', "http.user_agent", False),
    ("tcp", "app-layer-protocol:tls;", "app-layer-protocol", False),
    ("ip", "ip_proto:47;", "ip_proto", False),
    ("udp", "dsize:>10;", "dsize", False),
    ("icmp", "itype:8;", "itype", False),
    ("quic", 'quic.sni; content:"a";', "quic.sni", False),
    ("dns", "dns.opcode:0;", "dns.opcode", False),
    ("dns", 'dns.query; domain; content:"a";', "domain", True),
]


@pytest.mark.parametrize("proto,options,keyword,_suricata", KEYWORDS)
def test_unsupported_keyword_names_line_sid_keyword(proto: str, options: str, keyword: str,
                                                    _suricata: bool) -> None:
    e = refused(GOOD_BEFORE + f"alert {proto} any any -> any any ({options} sid:9;)\n")
    assert (e.file, e.where, e.reason) == ("t.rules", "line 3, sid 9",
                                          f"unsupported keyword {keyword!r}")


# (rule, where, reason fragment, whether Suricata 7 refuses it too)
REFUSED = [
    ('sdrop tls any any -> any any (sid:7;)', "line 1, sid 7", "action 'sdrop'", None),
    ('rejectsrc tcp any any -> any any (sid:7;)', "line 1, sid 7", "action 'rejectsrc'", False),
    ('log tcp any any -> any any (sid:7;)', "line 1, sid 7", "action 'log'", None),
    ('alert smtp any any -> any any (sid:7;)', "line 1, sid 7", "protocol 'smtp'", False),
    ('alert TLS any any -> any any (sid:7;)', "line 1, sid 7", "protocol 'TLS'", True),
    ('alert tls any any <- any any (sid:7;)', "line 1, sid 7", "direction '<-'", True),
    ('alert tls any any -> any any (msg:"no sid";)', "line 1", "no sid", None),
    ('alert tls any any -> any any (sid:0;)', "line 1, sid 0", "sid must be 1", True),
    ('alert tls any any -> any any (sid:7; sid:8;)', "line 1, sid 8", "'sid' given twice", True),
    ('alert tls any any -> any any (msg:"a"; msg:"b"; sid:7;)', "line 1, sid 7",
     "'msg' given twice", True),
    ('alert tls any any -> any any (msg:unquoted; sid:7;)', "line 1, sid 7", "double-quoted", True),
    ('alert tls any any -> any any (tls.sni; content:"a"; sid:7)', "line 1",
     "cannot read the options", True),
    ('alert tcp any any -> any any (content:"GET"; sid:7;)', "line 1, sid 7", "payload", False),
    ('alert tls any any -> any any (tls.sni; sid:7;)', "line 1, sid 7", "has no content", True),
    ('alert tls any any -> any any (tls.sni; startswith; content:"a"; sid:7;)', "line 1, sid 7",
     "startswith needs a content", True),
    ('alert tls any any -> any any (tls.sni; content:"a"; nocase; nocase; sid:7;)',
     "line 1, sid 7", "nocase given twice", True),
    ('alert tls any any -> any any (tls.sni; content:"a"; startswith; startswith; sid:7;)',
     "line 1, sid 7", "startswith given twice", True),
    ('alert tls any any -> any any (tls.sni; content:"a"; dotprefix; sid:7;)', "line 1, sid 7",
     "dotprefix must follow", False),
    ('alert tls any any -> any any (tls.sni; dotprefix; dotprefix; content:".a"; sid:7;)',
     "line 1, sid 7", "dotprefix must follow", False),
    ('alert tls any any -> any any (tls.sni; nocase:1; content:"a"; sid:7;)', "line 1, sid 7",
     "takes no value", None),
    ('alert http any any -> any any (tls.sni; content:"a"; sid:7;)', "line 1, sid 7",
     "tls.sni needs tls but the rule is already for http", True),
    ('alert quic any any -> any any (tls.sni; content:"a"; sid:7;)', "line 1, sid 7",
     "tls.sni needs tls", True),
    ('alert tcp any any -> any any (tls.sni; content:"a"; http.host; content:"b"; sid:7;)',
     "line 1, sid 7", "http.host needs http but the rule is already for tls", True),
    ('alert http any any -> any any (ssl_state:client_hello; sid:7;)', "line 1, sid 7",
     "ssl_state needs tls", True),
    ('alert udp any any -> any any (tls.sni; content:"a"; sid:7;)', "line 1, sid 7",
     "udp traffic never carries tls", False),
    ('alert tls any any -> any any (ssl_state:server_hello; sid:7;)', "line 1, sid 7",
     "ssl_state", False),
    ('alert tls any any -> any any (flow:to_server,to_client; sid:7;)', "line 1, sid 7",
     "both directions", True),
    ('alert tls any any -> any any (flow:established,not_established; sid:7;)',
     "line 1, sid 7", "conflicting connection states", True),
    ('alert tls any any -> any any (flow:stateless,established; sid:7;)', "line 1, sid 7",
     "conflicting connection states", True),
    ('alert tls any any -> any any (flow:only_stream; sid:7;)', "line 1, sid 7",
     "flow option 'only_stream'", False),
    ('alert dns any any -> any any (flow:to_client; dns.query; content:"a"; sid:7;)',
     "line 1, sid 7", "flow:to_client conflicts with dns.query", True),
    ('alert http any any -> any any (http.host; content:"Example.com"; sid:7;)',
     "line 1, sid 7", "lower case", True),
    ('alert http any any -> any any (http.header_names; content:"Host"; sid:7;)',
     "line 1, sid 7", "http.header_names", False),
    ('alert tls any any -> any any (tls.sni; content:"a\\x"; sid:7;)', "line 1, sid 7",
     "escapes", True),
    ('alert tls any any -> any any (tls.sni; content:"a|2e 6|"; sid:7;)', "line 1, sid 7",
     "odd number of hex digits", True),
    ('alert tls any any -> any any (tls.sni; content:"a|2e"; sid:7;)', "line 1, sid 7",
     "unclosed |hex|", True),
    ('alert tls any any -> any any (tls.sni; content:"a"b"; sid:7;)', "line 1, sid 7",
     "unescaped double quote", True),
    ('alert tls any any -> any any (tls.sni; content:""; sid:7;)', "line 1, sid 7", "empty", True),
    ('alert tls any any -> any any (tls.sni; content:a; sid:7;)', "line 1, sid 7",
     "double-quoted", True),
    ('alert tls $NOPE any -> any any (sid:7;)', "line 1, sid 7",
     "unknown address variable '$NOPE'", True),
    ('alert tls any $HOME_NET -> any any (sid:7;)', "line 1, sid 7",
     "unknown port variable '$HOME_NET'", True),
    ('alert tls !any any -> any any (sid:7;)', "line 1, sid 7", "every IPv4 address is negated",
     True),
    ('alert tls [1.2.3.4,!0.0.0.0/0] any -> any any (sid:7;)', "line 1, sid 7",
     "every IPv4 address is negated", True),
    ('alert tls any any -> [10.0.0.0/8,!10.0.0.0/8] any (sid:7;)', "line 1, sid 7",
     "no address is left", True),
    ('alert tls any any -> any [80,!80] (sid:7;)', "line 1, sid 7", "no port is left", True),
    ('alert tls any any -> any !0:65535 (sid:7;)', "line 1, sid 7", "every port is negated", True),
    ('alert tls any any -> any [80,,443] (sid:7;)', "line 1, sid 7", "empty item", True),
    ('alert tls [10.0.0.0/8 any -> any any (sid:7;)', "line 1", "not a Suricata rule", True),
    ('alert tls 1.2.3.4/33 any -> any any (sid:7;)', "line 1, sid 7", "not a CIDR block", True),
    ('alert tls 10.0.0.1/8 any -> any any (sid:7;)', "line 1, sid 7", "not a CIDR block", False),
    ('alert tls 1.2.3.4-1.2.3.9 any -> any any (sid:7;)', "line 1, sid 7", "not a CIDR block",
     False),
    ('alert tls @PREFIXES any -> any any (sid:7;)', "line 1, sid 7", "IP set reference", None),
    ('alert tls any 70000 -> any any (sid:7;)', "line 1, sid 7", "within 0-65535", True),
    ('alert tls any 100:50 -> any any (sid:7;)', "line 1, sid 7", "within 0-65535", True),
    ('alert tls any 80-90 -> any any (sid:7;)', "line 1, sid 7", "not a port", True),
    ('alert icmp any any -> any 80 (sid:7;)', "line 1, sid 7", "icmp packets have none", False),
    ('alert tls any any -> any any (priority:high; sid:7;)', "line 1, sid 7", "not a number",
     True),
    ('alert tls any any -> any any (aws_route_53_resolved_domain:"a..com"; sid:7;)',
     "line 1, sid 7", "empty label", None),
    ('   alert tls any any -> any any (sid:7;)', "line 1", "white space", None),
    ('hello world', "line 1", "not a Suricata rule", None),
]


@pytest.mark.parametrize("text,where,fragment,_suricata", REFUSED)
def test_refused(text: str, where: str, fragment: str, _suricata: bool | None) -> None:
    e = refused(text)
    assert e.where == where and fragment in e.reason, e


def test_duplicate_sid_names_both_lines() -> None:
    e = refused('alert tls any any -> any any (sid:5;)\n\nalert tcp any any -> any any (sid:5;)')
    assert (e.where, e.reason) == ("line 3, sid 5", "duplicate sid (also on line 1)")


def _suricata_failures(suricata_bin: str, tmp: Path, lines: list[str]) -> set[int]:
    """Line numbers `suricata -T` refuses."""
    rules = tmp / "all.rules"
    rules.write_text("".join(line + "\n" for line in lines))
    res = subprocess.run([suricata_bin, "-T", "-S", str(rules), "-l", str(tmp)],
                         capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    return {int(line.rsplit(" ", 1)[1]) for line in out.splitlines()
            if "error parsing signature" in line}


def test_suricata_agrees_on_what_is_a_rule(suricata_bin: str, tmp_path: Path) -> None:
    """Every rule this loader accepts loads in Suricata 7; of those it refuses, the ones
    marked so are refused by Suricata too, the others are Suricata rules outside the
    subset (refused here so they are never mis-judged)."""
    accepted = (AWS_TLS_ALLOWLIST + AWS_HTTP_ALLOWLIST + AWS_DENYLIST + AWS_SSM + "\n"
                + AWS_HTTP_ACTION_ORDER + MULTILINE + FORMS).replace("\\\n", "")
    lines, expect = [], set()
    sid = itertools.count(1000)
    for text in accepted.splitlines():
        if text.strip() and not text.startswith("#"):
            parse(text)
            lines.append(re.sub(r"sid: ?\d+", lambda _: f"sid:{next(sid)}", text))
    for proto, options, _, suricata_refuses in KEYWORDS:
        lines.append(f"alert {proto} any any -> any any ({options} sid:{next(sid)};)")
        if suricata_refuses:
            expect.add(len(lines))
    for text, _, _, suricata_refuses in REFUSED:
        if suricata_refuses is None:
            continue
        lines.append(text.replace("sid:7;", f"sid:{next(sid)};").replace("sid:7)",
                                                                          f"sid:{next(sid)})"))
        if suricata_refuses:
            expect.add(len(lines))
    assert _suricata_failures(suricata_bin, tmp_path, lines) == expect


# --- lines, comments, detection, loading ----------------------------------------

MULTILINE = """\
# a comment, then a blank line

alert dns any any -> any any (msg:"split"; \\
    dns.query; dotprefix; content:".example.org"; \\
    endswith; sid:11;)
# alert tls any any -> any any (msg:"disabled, continued"; \\
    bogus_keyword; sid:12;)
alert tls any any -> any any (tls.sni; content:"last.example"; startswith; endswith; sid:13;)
"""


def test_multiline_rules_report_their_first_line() -> None:
    split, last = parse(MULTILINE)
    assert (split.sid, split.origin.line, last.sid, last.origin.line) == (11, 3, 13, 8)
    assert split.names == (cond("dns.query", (DOMAIN, b"example.org")),)
    assert split.origin.text.startswith('alert dns any any -> any any (msg:"split";     dns.query;')
    shifted = parse(MULTILINE, first_line=40)
    assert [r.origin.line for r in shifted] == [42, 47]
    e = refused(MULTILINE.replace("endswith; sid:11", "depth:3; sid:11"))
    assert e.where == "line 3, sid 11"


def test_looks_like_rules() -> None:
    assert suricata.looks_like_rules(MULTILINE)
    assert suricata.looks_like_rules(AWS_TLS_ALLOWLIST)
    # a rule outside the subset is still a rules file: the loader then says why
    assert suricata.looks_like_rules("accept:hook tcp:all any any <> any 80 (sid:10;)\n")
    for other in ("version: 1\nhome_net: [10.0.0.0/8]\n", '{"RuleGroup": {"RulesSource": {}}}',
                  "# blocked\nexample.com\n*.evil.example\n", "", "# only (a comment)\n",
                  "Some text (with parentheses)\n"):
        assert not suricata.looks_like_rules(other), other


def test_load_names_the_group_for_the_file() -> None:
    policy = suricata.load(AWS_TLS_ALLOWLIST, "/etc/egress/allow-tls.rules")
    (group,) = policy.stateful
    assert (group.name, group.priority, len(group.rules)) == ("allow-tls", 0, 3)
    assert policy.sources == ["/etc/egress/allow-tls.rules"]
    assert {r.origin.group for r in group.rules} == {"allow-tls"}
    assert {r.origin.file for r in group.rules} == {"/etc/egress/allow-tls.rules"}


def test_resolved_domain_keyword() -> None:
    """AWS: a double-quoted, comma-separated value; its domain-list formats (leading dot
    for the domain and its subdomains) (docs.aws.amazon.com/network-firewall/latest/
    developerguide/route53-resolved-ip-validation-rules.html)."""
    rule = one('pass tcp $HOME_NET any -> $EXTERNAL_NET 443 (aws_route_53_resolved_domain:'
               '"example.com,.cdn.example.net"; flow:to_server; sid:4;)')
    assert rule.resolved == DomainSet((Pattern(EXACT, b"example.com"),
                                       Pattern(DOMAIN, b"cdn.example.net")))
    assert rule.names == () and rule.app is None


FORMS = """\
alert tls any any -> any any (tls.sni; content:"WWW.Example.COM."; startswith; endswith; tls.sni; dotprefix; content:".Example.COM."; endswith; tls.sni; content:"Example|2E|"; sid:1;)
alert http any any -> any any (content:"example.com"; http_host; endswith; fast_pattern; sid:2;)
alert dns any any -> any any (dns_query; content:"a"; sid:3;)
alert tcp any any -> any any (tls_sni; content:"a"; sid:4;)
alert ip any any -> any any (dns.query; content:"a"; sid:5;)
alert tcp any any -> any any (ssl_state:client_hello; classtype:misc-activity; metadata:k v; reference:url,example.com; gid:1; sid:6;)
"""


def test_other_forms() -> None:
    """egressd names are lower case without a trailing dot: nocase is implied, and a
    content anchored at the end drops its trailing dot.  Legacy names and modifiers,
    and buffers that set the application of a tcp or ip rule."""
    folded, legacy, dns_query, tls_sni, ip_dns, ssl_state = parse(FORMS)
    assert folded.names == (cond("tls.sni", (EXACT, b"www.example.com")),
                            cond("tls.sni", (DOMAIN, b"example.com")),
                            cond("tls.sni", (CONTAINS, b"example.")))
    assert (legacy.app, legacy.names) == ("http", (cond("http.host", (SUFFIX, b"example.com")),))
    assert (dns_query.app, tls_sni.app, ssl_state.app) == ("dns", "tls", "tls")
    assert (ip_dns.app, ip_dns.match.protocols) == ("dns", {6, 17})
    assert (ssl_state.match.protocols, ssl_state.names, ssl_state.priority) == ({6}, (), 3)


# --- dotprefix, startswith, endswith against Suricata's literal semantics -------------

def _suricata_match(content: bytes, dotprefix: bool, start: bool, end: bool, name: bytes) -> bool:
    """What Suricata does, literally: the buffer is the name ("." prepended with
    dotprefix); startswith anchors at offset 0, endswith at the end."""
    buf = b"." + name if dotprefix else name
    if start and end:
        return buf == content
    if start:
        return buf.startswith(content)
    if end:
        return buf.endswith(content)
    return content in buf


def test_content_patterns_equal_suricata_semantics() -> None:
    alphabet = b"ab."
    words = [bytes(w) for n in range(1, 4) for w in itertools.product(alphabet, repeat=n)]
    names = [bytes(w) for n in range(0, 5) for w in itertools.product(alphabet, repeat=n)]
    cases = [(w, dot, start, end) for w in words for dot in (False, True)
             for start in (False, True) for end in (False, True)]
    text = "".join(
        f'alert dns any any -> any any (dns.query; {"dotprefix; " if dot else ""}'
        f'content:"{w.decode()}"; {"startswith; " if start else ""}{"endswith; " if end else ""}'
        f'sid:{i + 1};)\n' for i, (w, dot, start, end) in enumerate(cases))
    rules = parse(text)
    for (w, dot, start, end), rule in zip(cases, rules, strict=True):
        (c,) = rule.names
        for name in names:
            # a content anchored at the end met a name whose trailing dot egressd removed
            wire = name + b"." if end and w.endswith(b".") else name
            expected = _suricata_match(w, dot, start, end, wire)
            assert domains.set_matches(c.names, name) == expected, (w, dot, start, end, name)


# --- addresses and ports --------------------------------------------------------

N = ipaddress.ip_network
HOME_NETS = [N(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


def _in(ip, *nets: str) -> bool:
    return any(ip.version == N(n).version and ip in N(n) for n in nets)


def _home(ip) -> bool:
    return any(ip.version == n.version and ip in n for n in HOME_NETS)


# (expression, membership as ipaddress sees it); Suricata fills a negation-only group
# from the negated addresses' own family, and flattens a plain nested group
ADDRESS_CASES = [
    ("any", lambda ip: True),
    ("10.0.0.0/8", lambda ip: _in(ip, "10.0.0.0/8")),
    ("!10.0.0.0/8", lambda ip: ip.version == 4 and not _in(ip, "10.0.0.0/8")),
    ("[!10.0.0.0/8]", lambda ip: ip.version == 4 and not _in(ip, "10.0.0.0/8")),
    ("[10.0.0.0/8,!10.1.0.0/16, 192.168.1.0/24]",
     lambda ip: _in(ip, "10.0.0.0/8", "192.168.1.0/24") and not _in(ip, "10.1.0.0/16")),
    ("[!10.0.0.0/8,!2001:db8::/32]", lambda ip: not _in(ip, "10.0.0.0/8", "2001:db8::/32")),
    ("2001:db8::/32", lambda ip: _in(ip, "2001:db8::/32")),
    ("::/0", lambda ip: ip.version == 6),
    ("0.0.0.0/0", lambda ip: ip.version == 4),
    ("[2001:db8::/32,!10.0.0.1]",
     lambda ip: _in(ip, "2001:db8::/32") or (ip.version == 4 and not _in(ip, "10.0.0.1/32"))),
    ("$HOME_NET", _home),
    ("$EXTERNAL_NET", lambda ip: not _home(ip)),
    ("!$HOME_NET", lambda ip: not _home(ip)),
    ("[$HOME_NET,!10.1.2.3]", lambda ip: _home(ip) and not _in(ip, "10.1.2.3/32")),
    ("![10.0.0.0/8,!10.1.0.0/16]",
     lambda ip: ip.version == 4 and not (_in(ip, "10.0.0.0/8") and not _in(ip, "10.1.0.0/16"))),
    ("[10.0.0.0/8,[!10.1.0.0/16]]",
     lambda ip: _in(ip, "10.0.0.0/8") and not _in(ip, "10.1.0.0/16")),
    ("[10.1.0.0/16,[192.168.0.0/16,!10.1.2.0/24]]",
     lambda ip: _in(ip, "10.1.0.0/16", "192.168.0.0/16") and not _in(ip, "10.1.2.0/24")),
    ("[any,!10.0.0.0/8]", lambda ip: not _in(ip, "10.0.0.0/8")),
]


def _sample_addresses() -> list:
    """The edges of every block the cases name, and random addresses of both families."""
    rng = random.Random(5)
    nets = {N(n) for n in ("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.0.0.1/32",
                           "10.1.2.3/32", "192.168.1.0/24", "192.168.0.0/16", "172.16.0.0/12",
                           "2001:db8::/32", "fc00::/7", "0.0.0.0/0", "::/0")}
    out = set()
    for net in nets:
        for edge in (int(net.network_address), int(net.broadcast_address)):
            for d in (-1, 0, 1):
                if 0 <= edge + d < 2 ** net.max_prefixlen:
                    out.add(ipaddress.ip_address(edge + d) if net.version == 6
                            else ipaddress.IPv4Address(edge + d))
    out |= {ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(300)}
    out |= {ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(300)}
    # IPv4-mapped IPv6 addresses are where egressd keeps IPv4: not a distinct IPv6 address
    return sorted((a for a in out if not (a.version == 6 and a.ipv4_mapped)), key=str)


def _src(expr: str):
    return one(f"alert ip {expr} any -> any any (sid:1;)").match.src


def _member(ranges, ip) -> bool:
    return ranges is None or addr.contains(ranges, addr.address(str(ip)))


@pytest.mark.parametrize("expr,member", ADDRESS_CASES, ids=[c[0] for c in ADDRESS_CASES])
def test_address_groups(expr: str, member) -> None:
    ranges = _src(expr)
    for ip in _sample_addresses():
        assert _member(ranges, ip) == member(ip), (expr, ip)


PORT_CASES = [
    ("80", lambda p: p == 80),
    ("1024:", lambda p: p >= 1024),
    (":1023", lambda p: p <= 1023),
    ("[80,443]", lambda p: p in (80, 443)),
    ("!22", lambda p: p != 22),
    ("[1:100,!50]", lambda p: 1 <= p <= 100 and p != 50),
    ("![80,443]", lambda p: p not in (80, 443)),
    ("[!80,!443]", lambda p: p not in (80, 443)),
    ("[1024:65535,[!2000:3000]]", lambda p: p >= 1024 and not 2000 <= p <= 3000),
    ("$HTTP_PORTS", lambda p: p == 80),
    ("[$HTTP_PORTS,8080]", lambda p: p in (80, 8080)),
    ("$SHELLCODE_PORTS", lambda p: p != 80),
    ("$FILE_DATA_PORTS", lambda p: p in (80, 110, 143)),
    ("[0:65535]", lambda p: True),
]


@pytest.mark.parametrize("expr,member", PORT_CASES, ids=[c[0] for c in PORT_CASES])
def test_port_groups(expr: str, member) -> None:
    match = one(f"alert ip any any -> any {expr} (sid:1;)").match
    # Suricata never matches a rule that names ports on a packet without ports
    assert match.protocols == {6, 17, 132} and match.sport is None
    for p in range(addr.PORT_MAX + 1):
        assert (match.dport is None or addr.contains(match.dport, p)) == member(p), (expr, p)


def test_any_ports_keep_every_protocol() -> None:
    assert one("alert ip any any -> any any (sid:1;)").match.protocols is None
    assert one("alert ip any ANY -> any Any (sid:1;)").match.protocols is None
    assert one("alert icmp any any -> any any (sid:1;)").match.protocols == {1, 58}


def test_default_variables() -> None:
    ips, ports = VARS.ip_sets, VARS.port_sets
    assert ips["HOME_NET"] == addr.cidrs(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                          "fc00::/7"])
    assert ips["EXTERNAL_NET"] == addr.complement(ips["HOME_NET"], addr.ADDR_MAX)
    assert ips["HTTP_SERVERS"] == ips["HOME_NET"] and ips["AIM_SERVERS"] == ips["EXTERNAL_NET"]
    assert (ports["HTTP_PORTS"], ports["SSH_PORTS"]) == (((80, 80),), ((22, 22),))
    assert ports["FILE_DATA_PORTS"] == ((80, 80), (110, 110), (143, 143))
    # suricata.yaml's EXTERNAL_NET is "!$HOME_NET": per family, as the Suricata run shows
    v4_home = suricata.default_variables(addr.cidrs(["10.0.0.0/8"]))
    assert v4_home.ip_sets["EXTERNAL_NET"] == addr.subtract(
        (addr.cidr("0.0.0.0/0"),), addr.cidrs(["10.0.0.0/8"]), addr.ADDR_MAX)


# --- Suricata itself on crafted packets ----------------------------------------

def _frame(src, dst, proto: str, dport: int, sport: int) -> bytes:
    if proto == "icmp":
        l4 = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=sport, seq=1, data=b"x"))
    else:
        l4 = dpkt.udp.UDP(sport=sport, dport=dport, data=b"x")
    if src.version == 4:
        ip = dpkt.ip.IP(src=src.packed, dst=dst.packed, p=1 if proto == "icmp" else 17, data=l4)
        ip.len += len(bytes(l4))
        etype = dpkt.ethernet.ETH_TYPE_IP
    else:
        ip = dpkt.ip6.IP6(src=src.packed, dst=dst.packed, nxt=17, hlim=64, data=l4,
                          plen=len(bytes(l4)))
        etype = dpkt.ethernet.ETH_TYPE_IP6
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=etype, data=ip))


def test_addresses_and_ports_agree_with_suricata(suricata_bin: str, tmp_path: Path) -> None:
    """One Suricata run judges every (packet, rule) pair; each packet is its own flow."""
    rng = random.Random(7)
    samples = _sample_addresses()
    v4 = [a for a in samples if a.version == 4]
    v6 = [a for a in samples if a.version == 6]
    picked = rng.sample(v4, 40) + rng.sample(v6, 20) + [
        a for a in samples if str(a) in ("10.0.0.0", "10.0.0.1", "10.1.2.3", "10.1.255.255",
                                         "9.255.255.255", "192.168.1.0", "2001:db8::", "fc00::")]
    dst4, dst6 = ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("2001:db8:ffff::1")
    packets = [(a, dst4 if a.version == 4 else dst6, "udp", 9, 1000 + i)
               for i, a in enumerate(picked)]
    src = ipaddress.ip_address("198.51.100.7")
    ports = [0, 1, 21, 22, 23, 49, 50, 51, 79, 80, 81, 100, 101, 110, 143, 443, 1023, 1024,
             1999, 2000, 2500, 3000, 3001, 8080, 65535]
    packets += [(src, dst4, "udp", p, 3000 + i) for i, p in enumerate(ports)]
    packets.append((src, dst4, "icmp", 0, 77))
    rules = [f"alert ip {e} any -> any any (sid:{i + 1};)"
             for i, (e, _) in enumerate(ADDRESS_CASES)]
    rules += [f"alert ip any any -> any {e} (sid:{i + 101};)"
              for i, (e, _) in enumerate(PORT_CASES)]
    pcap = write_pcap(tmp_path / "in.pcap", [Record(i * 1000, _frame(*p), len(_frame(*p)))
                                             for i, p in enumerate(packets)], nsec=False)
    (tmp_path / "t.rules").write_text("\n".join(rules) + "\n")
    subprocess.run([suricata_bin, "-r", str(pcap), "-S", str(tmp_path / "t.rules"), "-k", "none",
                    "--runmode=single", "-l", str(tmp_path),
                    "--set", f"vars.address-groups.HOME_NET={HOME_NET_TEXT}",
                    # Suricata logs 15 alerts a packet by default; some match more rules
                    "--set", "packet-alert-max=100"],
                   check=True, capture_output=True, timeout=120)
    seen = {(e["pcap_cnt"], e["alert"]["signature_id"])
            for e in map(json.loads, (tmp_path / "eve.json").read_text().splitlines())
            if e["event_type"] == "alert"}
    ours = set()
    for (i, (s, _, proto, dport, _)), rule in itertools.product(enumerate(packets, 1),
                                                                parse("\n".join(rules))):
        m = rule.match
        number = 1 if proto == "icmp" else 17
        if ((m.protocols is None or number in m.protocols) and _member(m.src, s)
                and (m.dport is None or addr.contains(m.dport, dport))):
            ours.add((i, rule.sid))
    assert ours == seen
