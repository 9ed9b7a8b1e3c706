"""Suricata rules (a `.rules` file, or an AWS RulesString) -> StatefulRules.

idstools splits each rule into its header and its options (it knows the option
escapes); this module gives them the meaning Suricata 7 gives them, for the subset
DESIGN.md names, and refuses everything else with the line, the sid and the keyword.
A rule egressd cannot judge the way Suricata would is an error, never a rule that
quietly matches something else.

Names are compared as egressd stores them (lower case, one trailing dot removed), so
every content matches case-insensitively: `nocase` is implied.
"""
from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn

from idstools import rule as idsrule

from egressd.rules import addr, domains
from egressd.rules.policy import (CONTAINS, DOMAIN, EXACT, PREFIX, SUFFIX, App, DomainSet,
                                  Match, NameCond, Origin, Pattern, Policy, PolicyError,
                                  Ranges, StatefulGroup, StatefulRule, Variables)

ACTIONS = ("pass", "drop", "reject", "alert")

# header protocol -> (IP protocols, application); Suricata's icmp is ICMP and ICMPv6
_PROTOCOLS: dict[str, tuple[frozenset[int] | None, App | None]] = {
    "ip": (None, None),
    "tcp": (frozenset({6}), None),
    "udp": (frozenset({17}), None),
    "icmp": (frozenset({1, 58}), None),
    "tls": (frozenset({6}), "tls"),
    "http": (frozenset({6}), "http"),
    "dns": (frozenset({6, 17}), "dns"),
    "quic": (frozenset({17}), "quic"),
}
_APP_PROTOCOLS = {app: protos for protos, app in _PROTOCOLS.values() if app}
# Suricata never matches a rule with ports (other than the word `any`) on a packet
# without them (ICMP, GRE, ...): checked with Suricata 7.0.10 on crafted packets.
_PORTED = frozenset({6, 17, 132})

# sticky buffers, with the Suricata 6 names Suricata 7 still accepts, and the
# application each one sets the rule to
_STICKY = {"tls.sni": "tls.sni", "tls_sni": "tls.sni", "http.host": "http.host",
           "dns.query": "dns.query", "dns_query": "dns.query",
           "http.header_names": "http.header_names"}
_BUFFER_APP: dict[str, App] = {"tls.sni": "tls", "http.host": "http", "dns.query": "dns",
                               "http.header_names": "http"}
# content modifiers; `http_host` is Suricata's legacy form of the http.host buffer
# and `fast_pattern` only steers Suricata's prefilter
_MODIFIERS = ("nocase", "startswith", "endswith", "fast_pattern", "http_host")
_ONCE = ("sid", "rev", "gid", "msg", "priority", "classtype",
         "aws_route_53_resolved_domain")
_NO_EFFECT = ("gid", "classtype", "metadata", "reference")
# AWS generates `drop http ... (http.header_names; content:"|0d 0a|"; startswith; ...)`
# for an HTTP allowlist (docs.aws.amazon.com/network-firewall/latest/developerguide/
# suricata-examples.html, "HTTP allow list example").  That buffer always starts with
# CRLF once the request headers are parsed, so the condition only means "judge the
# request once its headers are in", which is when egressd judges HTTP anyway.
_HEADER_NAMES_ALWAYS = b"\r\n"

_V4: Ranges = addr.V4_MAPPED
_V6: Ranges = addr.complement(_V4, addr.ADDR_MAX)
_PORT = re.compile(r"\d+|\d+:\d*|:\d+")
_FIRST_WORD = re.compile(r"^\S+")
_ESCAPES = '\\";:'

_DEFAULT_HOME_NET = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
# vars of Suricata 7's default suricata.yaml, in an order that defines each before use
_DEFAULT_ADDRESS_VARS = {
    "EXTERNAL_NET": "!$HOME_NET", "HTTP_SERVERS": "$HOME_NET", "SMTP_SERVERS": "$HOME_NET",
    "SQL_SERVERS": "$HOME_NET", "DNS_SERVERS": "$HOME_NET", "TELNET_SERVERS": "$HOME_NET",
    "AIM_SERVERS": "$EXTERNAL_NET", "DC_SERVERS": "$HOME_NET", "DNP3_SERVER": "$HOME_NET",
    "DNP3_CLIENT": "$HOME_NET", "MODBUS_CLIENT": "$HOME_NET", "MODBUS_SERVER": "$HOME_NET",
    "ENIP_CLIENT": "$HOME_NET", "ENIP_SERVER": "$HOME_NET"}
_DEFAULT_PORT_VARS = {
    "HTTP_PORTS": "80", "SHELLCODE_PORTS": "!80", "ORACLE_PORTS": "1521", "SSH_PORTS": "22",
    "DNP3_PORTS": "20000", "MODBUS_PORTS": "502", "FILE_DATA_PORTS": "[$HTTP_PORTS,110,143]",
    "FTP_PORTS": "21", "GENEVE_PORTS": "6081", "VXLAN_PORTS": "4789", "TEREDO_PORTS": "3544"}


# --- addresses and ports -----------------------------------------------------------

@dataclass(frozen=True)
class _Space:
    """What an address or port field is drawn from."""

    noun: str
    first_family: str              # what Suricata refuses to see wholly negated
    families: tuple[Ranges, ...]   # Suricata fills a pure negation per address family
    top: int
    atom: Callable[[str], Ranges]
    sets: dict[str, Ranges]


def _address(text: str) -> Ranges:
    if text.startswith("@"):
        raise ValueError(f"IP set reference {text!r}: resolve it to CIDRs in a variable")
    return addr.cidr_set(text)


def _port(text: str) -> Ranges:
    if not _PORT.fullmatch(text):
        raise ValueError(f"{text!r} is not a port or port range")
    return (addr.port_range(text),)


def _address_space(sets: dict[str, Ranges]) -> _Space:
    return _Space("address", "IPv4 address", (_V4, _V6), addr.ADDR_MAX, _address, sets)


def _port_space(sets: dict[str, Ranges]) -> _Space:
    return _Space("port", "port", (addr.ANY_PORT,), addr.PORT_MAX, _port, sets)


def _split(text: str, sep: str | None) -> list[str]:
    """Split at `sep` (None: white space) outside brackets; items stripped."""
    parts, cur, depth = [], [], 0
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if depth < 0:
            raise ValueError(f"unbalanced ']' in {text!r}")
        if depth == 0 and (ch.isspace() if sep is None else ch == sep):
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError(f"unclosed '[' in {text!r}")
    parts.append("".join(cur).strip())
    if sep is None:
        return [p for p in parts if p]
    if not all(parts):
        raise ValueError(f"empty item in {text!r}")
    return parts


def _collect(text: str, space: _Space) -> tuple[list[Ranges], list[Ranges]]:
    """The plain and the negated parts of a group, as Suricata's DetectAddressParse2
    gathers them: a plain nested group joins its parent's lists, a negated one is
    resolved on its own first."""
    plain: list[Ranges] = []
    negated: list[Ranges] = []
    for item in _split(text, ","):
        neg = item.startswith("!")
        body = item[1:].strip() if neg else item
        if not body or body.startswith("!"):
            raise ValueError(f"bad {space.noun} {item!r}")
        if body.startswith("["):
            if not body.endswith("]"):
                raise ValueError(f"bad {space.noun} group {item!r}")
            p, n = _collect(body[1:-1], space)
            if neg:
                negated.append(_merge(p, n, space))
            else:
                plain += p
                negated += n
        else:
            (negated if neg else plain).append(_atom(body, space))
    return plain, negated


def _atom(text: str, space: _Space) -> Ranges:
    if text.lower() == "any":
        return ((0, space.top),)
    if text.startswith("$"):
        if text[1:] not in space.sets:
            raise ValueError(f"unknown {space.noun} variable {text!r}")
        return space.sets[text[1:]]
    return space.atom(text)


def _merge(plain: list[Ranges], negated: list[Ranges], space: _Space) -> Ranges:
    """Suricata's DetectAddressMergeNot: the plain parts minus the negated ones, where a
    family with negations but no plain part starts from that whole family."""
    pos = addr.normalize(r for rs in plain for r in rs)
    neg = addr.normalize(r for rs in negated for r in rs)
    if addr.intersect(neg, space.families[0]) == space.families[0]:
        raise ValueError(f"every {space.first_family} is negated")
    for family in space.families:
        if addr.intersect(neg, family) and not addr.intersect(pos, family):
            pos = addr.normalize(pos + family)
    out = addr.subtract(pos, neg, space.top)
    if not out:
        raise ValueError(f"no {space.noun} is left after the negations")
    return out


def _ranges(text: str, space: _Space) -> Ranges:
    return _merge(*_collect(text, space), space)


def _field(text: str, space: _Space) -> Ranges | None:
    out = _ranges(text, space)
    return None if out == ((0, space.top),) else out


def default_variables(home_net: Ranges | None = None) -> Variables:
    """HOME_NET (RFC 1918 and fc00::/7 unless given) and the other variables of
    Suricata 7's default suricata.yaml.  EXTERNAL_NET is its `!$HOME_NET`: the
    complement taken per address family, so a HOME_NET without IPv6 leaves IPv6 out
    of EXTERNAL_NET too, as in Suricata."""
    ips = {"HOME_NET": addr.cidrs(_DEFAULT_HOME_NET) if home_net is None else home_net}
    ports: dict[str, Ranges] = {}
    for name, text in _DEFAULT_ADDRESS_VARS.items():
        ips[name] = _ranges(text, _address_space(ips))
    for name, text in _DEFAULT_PORT_VARS.items():
        ports[name] = _ranges(text, _port_space(ports))
    return Variables(ip_sets=ips, port_sets=ports)


# --- names ----------------------------------------------------------------------

@dataclass
class _Content:
    buffer: str | None          # None: the packet payload (until `http_host` moves it)
    dotprefix: bool
    value: bytes
    negated: bool
    modifiers: set[str] = field(default_factory=set)


def _unescape(text: str, what: str) -> str:
    """A double-quoted option value with Suricata's escapes (\\\\ \\" \\; \\:) undone."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError(f"{what} must be a double-quoted string")
    out, escape = [], False
    for ch in text[1:-1]:
        if escape:
            if ch not in _ESCAPES:
                raise ValueError(f"'\\{ch}' in {what}: only \\\\ \\\" \\; \\: are escapes")
            out.append(ch)
            escape = False
        elif ch == "\\":
            escape = True
        elif ch == '"':
            raise ValueError(f"unescaped double quote inside {what}")
        else:
            out.append(ch)
    if escape:
        raise ValueError(f"{what} ends with a lone backslash")
    return "".join(out)


def _content_bytes(value: str) -> tuple[bytes, bool]:
    """(bytes, negated) of a `content` value: `!"..."` with |hex| runs."""
    negated = value.startswith("!")
    text = _unescape(value[1:].strip() if negated else value, "content")
    out, hexmode, digits = bytearray(), False, ""
    for ch in text:
        if ch == "|":
            if hexmode:
                if len(digits) % 2:
                    raise ValueError(f"odd number of hex digits in content {value}")
                out += bytes.fromhex(digits)
                digits = ""
            hexmode = not hexmode
        elif not hexmode:
            out += ch.encode()
        elif ch in string.hexdigits:
            digits += ch
        elif ch != " ":
            raise ValueError(f"{ch!r} inside |hex| in content {value}")
    if hexmode:
        raise ValueError(f"unclosed |hex| in content {value}")
    if not out:
        raise ValueError("empty content")
    return bytes(out), negated


def _patterns(c: _Content) -> DomainSet:
    """The names `c` matches, as patterns over egressd's names.  With `dotprefix`
    Suricata matches "." + name; each case below is that, restated on the name."""
    v = c.value.lower()
    start, end = "startswith" in c.modifiers, "endswith" in c.modifiers
    if end and v.endswith(b"."):
        v = v[:-1]              # anchored where egressd has removed the trailing dot
    if c.dotprefix and v.startswith(b"."):
        rest = v[1:]
        if start and end:
            return DomainSet((Pattern(EXACT, rest),))
        if end:
            return DomainSet((Pattern(DOMAIN, rest),))
        if start:
            return DomainSet((Pattern(PREFIX, rest),))
        # found at the added dot (the name starts with the rest) or inside the name
        return DomainSet((Pattern(PREFIX, rest), Pattern(CONTAINS, v)))
    if c.dotprefix and start:
        return DomainSet(())    # the buffer starts with the added dot, this content not
    # without a leading dot the content never covers the added one: it meets the name
    if start and end:
        return DomainSet((Pattern(EXACT, v),))
    if end:
        return DomainSet((Pattern(SUFFIX, v),))
    if start:
        return DomainSet((Pattern(PREFIX, v),))
    return DomainSet((Pattern(CONTAINS, v),))


def _resolved(value: str) -> DomainSet:
    """`aws_route_53_resolved_domain:"a.com,.b.com"`: AWS domain-list formats, a leading
    dot for the domain and its subdomains (docs.aws.amazon.com/network-firewall/latest/
    developerguide/route53-resolved-ip-validation-rules.html)."""
    names = _unescape(value, "aws_route_53_resolved_domain").split(",")
    return DomainSet(tuple(domains.aws_target(n) for n in names))


# --- rules ----------------------------------------------------------------------

def _logical_lines(text: str, first_line: int) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each rule.  Joined the way Suricata's loader joins a
    trailing backslash (the next line's text replaces it); comment lines, and the lines
    continuing them, are skipped; so are blank lines."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        n, joined, comment = first_line + i, lines[i].rstrip(), lines[i].lstrip().startswith("#")
        while joined.endswith("\\") and i + 1 < len(lines):
            i += 1
            joined = joined[:-1] + lines[i].rstrip()
        i += 1
        if joined.strip() and not comment:
            yield n, joined


def _stand_in(text: str) -> dict | None:
    """idstools knows only Snort's actions: read the rule under `alert` to learn its sid
    and whether it is a rule at all."""
    return idsrule.parse(_FIRST_WORD.sub("alert", text, count=1))


def _read(text: str, file: str, n: int) -> dict:
    where = f"line {n}"
    if text[0].isspace():
        raise PolicyError(file, where, "the rule starts with white space, which makes "
                          "Suricata skip it: remove the indent or comment the rule out")
    try:
        r = idsrule.parse(text)
        known = r if r is not None and r["action"] in ACTIONS else _stand_in(text)
    except Exception as e:      # idstools raises plain Exception for unsplittable options
        raise PolicyError(file, where, f"cannot read the options ({e})") from None
    if known is None or known["proto"] is None:
        raise PolicyError(file, where, "not a Suricata rule: expected 'action protocol "
                          "source port direction destination port (options;)'")
    if known["sid"] is None:
        raise PolicyError(file, where, "the rule has no sid")
    if known is not r:
        raise PolicyError(file, f"{where}, sid {known['sid']}",
                          f"unsupported action {text.split(None, 1)[0]!r} "
                          "(pass, drop, reject or alert)")
    return r


def parse_rules(text: str, file: str, variables: Variables, group: str = "",
                first_line: int = 1) -> list[StatefulRule]:
    """The rules of a `.rules` file or RulesString; PolicyError names the first rule
    outside the supported subset."""
    rules: list[StatefulRule] = []
    sids: dict[int, int] = {}
    for n, line in _logical_lines(text, first_line):
        r = _read(line, file, n)
        if r["sid"] in sids:
            raise PolicyError(file, f"line {n}, sid {r['sid']}",
                              f"duplicate sid (also on line {sids[r['sid']]})")
        sids[r["sid"]] = n
        rules.append(_Rule(r, file, n, variables).build(
            Origin("stateful", group, str(r["sid"]), file, n, line.strip())))
    return rules


class _Rule:
    """One idstools rule read with Suricata's meaning."""

    def __init__(self, r: dict, file: str, line: int, variables: Variables) -> None:
        self.r, self.file, self.variables = r, file, variables
        self.where = f"line {line}, sid {r['sid']}"
        self.proto = ""
        self.contents: list[_Content] = []
        self.apps: list[tuple[str, App]] = []     # (keyword, the application it needs)
        self.buffer: str | None = None            # the sticky buffer in force
        self.dotprefix = False
        self.buffer_contents = 0
        self.flow_dir: str | None = None
        self.established: bool | None = None
        self.stateless = False
        self.msg, self.priority, self.resolved, self.also_alert = "", 3, None, False

    def fail(self, reason: str) -> NoReturn:
        raise PolicyError(self.file, self.where, reason)

    def build(self, origin: Origin) -> StatefulRule:
        try:
            match, app = self.header()
            self.options()
        except PolicyError:
            raise
        except ValueError as e:     # from the address, port and content readers
            self.fail(str(e))
        names = self.names()
        if self.flow_dir == "to_client" and self.contents:
            self.fail(f"flow:to_client conflicts with {self.contents[0].buffer}, which the "
                      "client sends")
        header_app = app
        app = self.application(app)
        protocols = match.protocols
        if app is not None and header_app is None:
            need = _APP_PROTOCOLS[app]
            protocols = need if protocols is None else protocols & need
            if not protocols:
                self.fail(f"{self.proto} traffic never carries {app}")
        return StatefulRule(
            action=self.r["action"], match=replace(match, protocols=protocols),
            origin=origin, app=app, flow_dir=self.flow_dir, established=self.established,
            names=names, resolved=self.resolved, priority=self.priority, also_alert=self.also_alert,
            sid=self.r["sid"],
            rev=self.r["rev"] if self.r["rev"] is not None else 1, msg=self.msg)

    def header(self) -> tuple[Match, App | None]:
        tokens = _split(self.r["header"], None)
        if len(tokens) != 7:
            self.fail("the header must be 'action protocol source port direction "
                      "destination port'")
        _, proto, src, sport, direction, dst, dport = tokens
        if proto.lower() in ("ip", "tcp", "udp", "icmp"):
            proto = proto.lower()       # Suricata reads these names in any case
        if proto not in _PROTOCOLS:
            self.fail(f"unsupported protocol {proto!r} ({', '.join(_PROTOCOLS)})")
        self.proto = proto
        if direction not in ("->", "<>"):
            self.fail(f"unsupported direction {direction!r} ('->' or '<>')")
        protocols, app = _PROTOCOLS[proto]
        ips, ports = _address_space(self.variables.ip_sets), _port_space(self.variables.port_sets)
        if sport.lower() != "any" or dport.lower() != "any":
            protocols = _PORTED if protocols is None else protocols & _PORTED
            if not protocols:
                self.fail(f"ports are given but {proto} packets have none")
        return Match(protocols=protocols, src=_field(src, ips), dst=_field(dst, ips),
                     sport=_field(sport, ports), dport=_field(dport, ports),
                     bidirectional=direction == "<>"), app

    def options(self) -> None:
        seen: set[str] = set()
        for opt in self.r["options"]:
            kw, value = opt["name"], opt["value"]
            if value is not None and (kw in _STICKY or kw in _MODIFIERS or kw == "dotprefix"):
                self.fail(f"{kw} takes no value")
            if kw in _ONCE:
                if kw in seen:
                    self.fail(f"keyword {kw!r} given twice")
                seen.add(kw)
            if kw in _STICKY:
                self.end_buffer()
                self.buffer, self.dotprefix, self.buffer_contents = _STICKY[kw], False, 0
                self.apps.append((kw, _BUFFER_APP[self.buffer]))
            elif kw == "dotprefix":
                if self.buffer is None or self.buffer_contents or self.dotprefix:
                    self.fail("dotprefix must follow a sticky buffer directly, once")
                self.dotprefix = True
            elif kw == "content":
                self.contents.append(_Content(self.buffer, self.dotprefix,
                                              *_content_bytes(value or "")))
                self.buffer_contents += 1
            elif kw in _MODIFIERS:
                self.modify(kw)
            elif kw == "flow":
                self.flow(value or "")
            elif kw == "ssl_state":
                # egressd judges TLS names from the ClientHello, so this is no extra condition
                if (value or "").strip() != "client_hello":
                    self.fail(f"unsupported ssl_state {value!r} (only client_hello)")
                self.apps.append((kw, "tls"))
            elif kw == "msg":
                self.msg = _unescape(value or "", "msg")
            elif kw == "sid":
                if self.r["sid"] < 1:
                    self.fail("sid must be 1 or more")
            elif kw == "rev":
                pass                    # idstools has read the number
            elif kw == "priority":
                if not (value or "").strip().isdigit():
                    self.fail(f"priority {value!r} is not a number")
                self.priority = int(value)
            elif kw == "aws_route_53_resolved_domain":
                self.resolved = _resolved(value or "")
            elif kw == "alert" and value is None:
                self.also_alert = True
            elif kw not in _NO_EFFECT:
                self.fail(f"unsupported keyword {kw!r}")
        self.end_buffer()

    def end_buffer(self) -> None:
        if self.buffer is not None and not self.buffer_contents:
            self.fail(f"sticky buffer {self.buffer} has no content after it")

    def modify(self, kw: str) -> None:
        if not self.contents or (self.buffer is not None and not self.buffer_contents):
            self.fail(f"{kw} needs a content before it")
        last = self.contents[-1]
        if kw in last.modifiers:
            self.fail(f"{kw} given twice for one content")
        last.modifiers.add(kw)
        if kw == "http_host":
            if last.buffer is not None:
                self.fail(f"http_host modifies a payload content, not one in {last.buffer}")
            last.buffer = "http.host"
            self.apps.append((kw, "http"))

    def flow(self, value: str) -> None:
        for option in (o.strip() for o in value.split(",")):
            direction = {"to_server": "to_server", "from_client": "to_server",
                         "to_client": "to_client", "from_server": "to_client"}.get(option)
            if direction:
                if self.flow_dir not in (None, direction):
                    self.fail("flow gives both directions")
                self.flow_dir = direction
            elif option in ("established", "not_established", "stateless"):
                state = {"established": True, "not_established": False}.get(option)
                if self.stateless or (self.established is not None
                                      and (option == "stateless" or state != self.established)):
                    self.fail("flow gives conflicting connection states")
                self.stateless = option == "stateless"
                self.established = state
            else:
                self.fail(f"unsupported flow option {option!r}")

    def names(self) -> tuple[NameCond, ...]:
        out = []
        for c in self.contents:
            if c.buffer is None:
                self.fail("content with no sticky buffer before it (payload matching) "
                          "is not supported")
            if c.buffer == "http.header_names":
                if (c.value, c.modifiers, c.negated, c.dotprefix) != (
                        _HEADER_NAMES_ALWAYS, {"startswith"}, False, False):
                    self.fail('http.header_names is supported only as AWS generates it: '
                              'content:"|0d 0a|"; startswith')
                continue
            if c.buffer == "http.host" and c.value != c.value.lower():
                # Suricata refuses these: its http.host buffer is lower case
                self.fail("http.host content must be lower case")
            out.append(NameCond(c.buffer, _patterns(c), c.negated))
        return tuple(out)

    def application(self, app: App | None) -> App | None:
        for kw, need in self.apps:
            if app not in (None, need):
                self.fail(f"{kw} needs {need} but the rule is already for {app}")
            app = need
        return app


def load(text: str, file: str) -> Policy:
    """A `.rules` file given directly: one stateful group named for the file, with the
    default variables."""
    name = Path(file).stem
    rules = parse_rules(text, file, default_variables(), group=name)
    return Policy(sources=[file], stateful=[StatefulGroup(name=name, priority=0, rules=rules)])


def looks_like_rules(text: str) -> bool:
    """Whether the first rule line (past comments and blank lines) reads as a rule."""
    for _, line in _logical_lines(text, 1):
        try:
            r = _stand_in(line)
        except Exception:       # idstools raises plain Exception for unsplittable options
            return False
        return r is not None and r["proto"] is not None
    return False
