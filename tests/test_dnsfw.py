"""Route 53 Resolver DNS Firewall domain lists (rules.dnsfw).

AWS's words, quoted as the fixtures' source
(https://docs.aws.amazon.com/Route53/latest/APIReference/API_route53resolver_ImportFirewallDomains.html,
https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/resolver-dns-firewall-user-managed-domain-lists.html):
"The file must be a text file and must contain a single domain per line"; a domain
specification "can optionally start with * (asterisk)", otherwise holds only "A-Z, a-z,
0-9, - (hyphen)" and the period between labels, and is "from 1-255 characters in length".
The docs give no matching examples; egressd reads `*.example.com` as DNS wildcards do
(RFC 4592: names below example.com, not example.com) and a plain name as that name only.
"""
import pytest

from egressd.rules import dnsfw
from egressd.rules.domains import normalize, set_matches
from egressd.rules.policy import PolicyError


def _matches(text: str, name: str) -> bool:
    return set_matches(dnsfw.parse_domain_list(text, "list.txt"), normalize(name))


@pytest.mark.parametrize("name, hit", [
    ("www.example.com", True),           # a subdomain
    ("a.b.example.com", True),           # deeper subdomains too
    ("WWW.Example.COM.", True),          # case and one trailing dot do not matter
    ("example.com", False),              # the apex is not below itself
    ("badexample.com", False),           # a look-alike shares only the suffix bytes
    ("example.com.evil.net", False),
])
def test_wildcard_matches_subdomains_only(name, hit):
    assert _matches("*.example.com\n", name) is hit


@pytest.mark.parametrize("name, hit", [
    ("example.com", True), ("EXAMPLE.com.", True),
    ("www.example.com", False), ("xexample.com", False),
])
def test_plain_entry_matches_that_name_only(name, hit):
    assert _matches("example.com\n", name) is hit


def test_apex_and_wildcard_together_cover_the_domain():
    text = "example.com\n*.example.com\n"
    assert _matches(text, "example.com") and _matches(text, "api.example.com")
    assert not _matches(text, "notexample.com")


def test_star_alone_matches_every_name():
    assert _matches("*\n", "anything.example") and _matches("*\n", "localhost")


def test_blank_lines_comments_and_spaces_are_skipped():
    ds = dnsfw.parse_domain_list("# blocked\n\n  c2.example.net  \r\nc2.example.net\n", "l")
    assert len(ds.patterns) == 1                     # duplicates collapse
    assert set_matches(ds, b"c2.example.net")


@pytest.mark.parametrize("line", [
    "*example.com",          # the asterisk starts a label of its own
    "www.*.example.com",     # only at the start
    "_dmarc.example.com",    # underscore is outside AWS's character set
    "https://example.com",
    "two words.example",
    "a..b.example",
    "x" * 64 + ".example",   # a label over 63 characters
])
def test_bad_specification_names_its_line(line):
    with pytest.raises(PolicyError) as e:
        dnsfw.parse_domain_list(f"good.example\n{line}\n", "list.txt")
    assert e.value.file == "list.txt" and e.value.where == "line 2"


def test_empty_list_is_an_error():
    with pytest.raises(PolicyError, match="no domains"):
        dnsfw.parse_domain_list("# nothing here\n\n", "list.txt")


@pytest.mark.parametrize("text, looks", [
    ("c2.example.net\n*.bad.example\n", True),
    ("# comment\nexample.com\n", True),
    ("version: 1\nhome_net: [10.0.0.0/8]\n", False),
    ('drop tls any any -> any any (tls.sni; content:"x"; sid:1;)\n', False),
    ('{"RuleGroup": {}}', False),
    ("# only a comment\n", False),
    ("", False),
])
def test_looks_like_domain_list(text, looks):
    assert dnsfw.looks_like_domain_list(text) is looks


def test_list_given_as_policy_is_one_nodata_block_rule():
    pol = dnsfw.load_list("c2.example.net\n*.bad.example\n", "/tmp/blocked.txt")
    (rule,) = pol.dns_firewall
    assert (rule.action, rule.response, rule.qtypes) == ("block", "nodata", None)
    assert len(rule.domains.patterns) == 2
    assert rule.origin.group == "blocked.txt" and rule.origin.file == "/tmp/blocked.txt"
    assert pol.sources == ["/tmp/blocked.txt"]
    assert pol.nacl is None and not pol.stateful and not pol.security_group
