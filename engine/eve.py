"""EVE JSON logs in AWS Network Firewall's format (the sink of DESIGN.md "Outputs").

Each line is what Network Firewall writes to its alert and flow logs
(firewall-logging-contents.html): {"firewall_name", "availability_zone",
"event_timestamp" (epoch seconds, a string), "event": {a Suricata EVE event}}.  The
schema is engine/eve.schema.json; the choices below are egressd's where AWS and
Suricata leave room.

Events (`types`, a subset of EVE_TYPES):

- alert: one per (flow, signature, action) run, not per packet.  A packet the policy
  dropped gives action "blocked" and the deciding rule; an alert the policy raised
  (alert rules, DNS Firewall ALERT, the engine's ECH / SNI-resolution / name-wait
  alerts) gives "allowed", as Suricata logs each alert with its own rule's action.
  Suricata 7 in IPS mode writes one drop alert per flow (a drop drops the flow, whose
  later packets go without alerts; tests/test_eve.py compares), but an alert rule
  that matches packets, or a per-packet layer (network ACL, stateless rules), would
  give a line per packet.  So here, whatever the layer, a flow's alert is written
  when its signature differs from the last one written for that flow and action;
  the repeats are counted in the flow event (`alerts`, `alerts_logged`,
  `pkts_blocked`).  gid is 1 and signature_id the sid of a
  Suricata rule, else a stable id >= 0xF0000000 hashed from (layer, group, rule), so
  that it survives policy edits; signature is the rule's msg (Suricata rules) or the
  catalog text; severity the rule's `priority`, else 3 (Suricata's default);
  category its classtype name, else the layer; alert.metadata says which layer,
  group, rule and file decided and, when blocked, the drop reason.  Alerts carry the
  flow's application metadata (tls / http / dns) as Suricata's do.
- flow: one per flow, when it ends (engine.flows records), Suricata's `flow` event:
  initiator as src, counters toserver/toclient, start/end/age, state, reason
  (timeout / forced for evictions / tcp_reuse / shutdown), alerted, action
  (drop/pass when the policy decided the whole flow), tcp.state.  AWS's own flow log
  uses Suricata's uni-directional `netflow` events instead; `flow` keeps one line per
  flow and both directions' counters together.
- tls: one per ClientHello whose server name was read (TLS and QUIC, app_proto
  "quic"): sni, version (the highest the client offered: the ClientHello is all
  egressd reads).  A ClientHello without SNI gives none.
- http: one per request whose Host was read: hostname, and url / http_method /
  protocol when the packet completing the Host also starts the request (the request
  line is then read from it); otherwise those are omitted.
- dns: one per DNS message with a question: a query as
  {"query": [{"type", "id", "rrname", "rrtype"}]}, a response as {"answer": {"type",
  "id", "flags", "qr", "rcode", "rrname", "rrtype", "answers"}} -- the form Suricata 7
  gives dns metadata in alerts, so `.event.dns` reads the same in both.  Answers list
  the A and AAAA records of the query name and its CNAMEs (what engine.l7 keeps),
  under the query's name.  DNS is the one type with a line per packet (per message):
  leave it out of `types` to bound the volume by flows.

Every event has a `gwlb` object: the GENEVE option values GWLB sent (endpoint id,
attachment id, flow cookie) as lowercase hex of the option bytes, 16/16/8 digits: the
text tshark shows for them (AWS documents no mapping from the 64-bit endpoint id to
a "vpce-..." name).  Addresses print as Suricata 7 prints them: IPv4 (kept IPv4-mapped)
dotted, IPv6 uncompressed (eight groups of four digits).  Timestamps come from
the packets, so a replay's log is reproducible: event.timestamp is the packet's (or
the flow end's) time in Suricata's format, event_timestamp its whole seconds.

Work per batch: a kernel walks the decided rows once, keeps the per-flow state above
in an open-addressing table keyed by flow_id (only flows with a drop, alert or
application entry; grown by doubling, bounded by the flows alive), and lists the rows
with something to write; Python builds only those events, orjson serialises them and
the batch's lines are written at once.  Flow events are written after the batch whose
flows stage ended them, so that a flow's own rows are counted first.  The file is
PATH.part until commit() renames it (a device or FIFO is written directly).
"""
from __future__ import annotations

import os
import re
import socket
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
from idstools import rule as idsrule
from numba import njit

from egressd.engine.batch import PacketBatch
from egressd.engine.flows import (CLOSED, END_EVICTED_CLOSED, END_EVICTED_EMBRYONIC, END_EVICTED_IDLE,
                                  END_REUSED, END_SHUTDOWN, END_TIMEOUT, ESTABLISHED, F_FIN_INIT,
                                  F_FIN_RESP, F_RST, F_SEEN_REPLY, FIN_WAIT, NONE, SYN_RCVD, SYN_SENT,
                                  _prefetch)
from egressd.engine.l7 import APP_DNS, APP_HTTP, APP_NAMES, APP_NONE, APP_QUIC, APP_TLS
from egressd.engine.pcapio import CaptureError
from egressd.engine.reasons import NAMES as REASON_NAMES
from egressd.engine.reasons import Verdict
from egressd.rules.policy import Origin

if TYPE_CHECKING:
    from egressd.engine.pipeline import Pipeline

EVE_TYPES = frozenset({"alert", "flow", "tls", "http", "dns"})

# what a listed row is logged as
K_BLOCKED, K_ALLOWED, K_TLS, K_HTTP, K_DNS = range(5)
_EVENTS_PER_ROW = 3   # at most two alerts and one application event
_AHEAD = 8            # prefetch distance, rows (as engine.flows)

# per-flow state, one entry per flow that had a drop, an alert or an application
STATE_DTYPE = np.dtype([
    ("fid", np.uint64),           # flow_id, 0: empty entry
    ("blocked", np.int32),        # catalog id of the last blocked alert written, -1 none
    ("allowed", np.int32),        # same for allowed alerts
    ("pkts_blocked", np.uint64),  # packets the policy dropped
    ("alerts", np.uint64),        # alerts raised (one per dropped packet, one per alert match)
    ("logged", np.uint32),        # alert events written
    ("app", np.uint8),            # engine.l7 APP_* first seen
], align=True)
_MIN_TABLE = 4096
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

_PROTO = {1: "ICMP", 6: "TCP", 17: "UDP", 47: "GRE", 50: "ESP", 51: "AH", 58: "IPv6-ICMP",
          132: "SCTP"}
_PORTED = frozenset({6, 17, 132})
_ICMP = frozenset({1, 58})
_TLS_VERSION = {0x0200: "SSLv2", 0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLS 1.1",
                0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
_RRTYPE = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
           33: "SRV", 35: "NAPTR", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 64: "SVCB",
           65: "HTTPS", 99: "SPF", 255: "ANY", 257: "CAA"}
_RCODE = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
          "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE")
# engine.flows END_* -> Suricata's flow end reason
_END_REASON = {END_TIMEOUT: "timeout", END_EVICTED_CLOSED: "forced", END_EVICTED_EMBRYONIC: "forced",
               END_EVICTED_IDLE: "forced", END_REUSED: "tcp_reuse", END_SHUTDOWN: "shutdown"}
# engine.flows state -> Suricata's TCP state names
_TCP_STATE = {NONE: "none", SYN_SENT: "syn_sent", SYN_RCVD: "syn_recv", ESTABLISHED: "established",
              FIN_WAIT: "fin_wait1", CLOSED: "closed"}
_LAYER_CATEGORY = {"nacl": "network ACL", "egress_only": "egress-only internet gateway",
                   "security_group": "security group", "dns_firewall": "DNS Firewall",
                   "stateless": "stateless rule", "stateful": "stateful rule",
                   "engine": "egressd engine"}
_ALERT_ACTION = {K_BLOCKED: "blocked", K_ALLOWED: "allowed"}
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^ \r\n]+) (HTTP/[0-9]\.[0-9])\r?\n")
_REQUEST_PEEK = 8192   # bytes of a packet searched for its request line


# --- the per-flow table ----------------------------------------------------------------

@njit(cache=True, nogil=True, inline="always")
def _home(fid, mask):
    h = fid * _GOLDEN
    return np.intp((h ^ (h >> np.uint64(29))) & mask)


@njit(cache=True, nogil=True)
def _find(tab, used, fid, insert):
    """Entry of flow `fid` (inserted if asked and absent), -1 if none.  Linear probing;
    the wrapper keeps the load at most 1/2, so an empty entry ends every probe."""
    size = tab.shape[0]
    mask = np.uint64(size - 1)
    j = _home(fid, mask)
    for _ in range(size):
        k = tab[j].fid
        if k == fid:
            return j
        if k == 0:
            if not insert or 2 * (used[0] + 1) > size:
                return -1
            e = tab[j]
            e.fid = fid
            e.blocked = -1
            e.allowed = -1
            e.pkts_blocked = 0
            e.alerts = 0
            e.logged = 0
            e.app = 0
            used[0] += 1
            return j
        j = (j + 1) & (size - 1)
    return -1


@njit(cache=True, nogil=True)
def _delete(tab, used, j):
    """Empty entry j, moving later entries of its probe run back (Knuth's algorithm R:
    no tombstones, so probes stay short whatever the churn)."""
    size = tab.shape[0]
    mask = np.uint64(size - 1)
    hole = j
    k = j
    for _ in range(size):
        k = (k + 1) & (size - 1)
        if tab[k].fid == 0:
            break
        h = _home(tab[k].fid, mask)
        # the entry at k may fill the hole unless its home lies cyclically in (hole, k]
        if (hole < k and hole < h <= k) or (hole > k and (h > hole or h <= k)):
            continue
        d, s = tab[hole], tab[k]
        d.fid, d.blocked, d.allowed = s.fid, s.blocked, s.allowed
        d.pkts_blocked, d.alerts, d.logged, d.app = s.pkts_blocked, s.alerts, s.logged, s.app
        hole = k
    tab[hole].fid = 0
    used[0] -= 1


@njit(cache=True, nogil=True)
def _rehash(old, new, used):
    used[0] = 0
    for j in range(old.shape[0]):
        s = old[j]
        if s.fid == 0:
            continue
        k = _find(new, used, s.fid, True)
        d = new[k]
        d.blocked, d.allowed, d.pkts_blocked = s.blocked, s.allowed, s.pkts_blocked
        d.alerts, d.logged, d.app = s.alerts, s.logged, s.app


@njit(cache=True, nogil=True)
def _select(n, verdict, rule, alert, flow_id, app, name_id, tab, used, track, want_alert,
            want_tls, want_http, want_dns, ev_row, ev_kind, ev_cat):
    """List the events of rows 0..n-1 (row, kind, catalog id) in row order and update
    the flows' state; returns how many."""
    n = min(n, verdict.shape[0], rule.shape[0], alert.shape[0], flow_id.shape[0], app.shape[0],
            name_id.shape[0], ev_row.shape[0] // _EVENTS_PER_ROW, ev_kind.shape[0] // _EVENTS_PER_ROW,
            ev_cat.shape[0] // _EVENTS_PER_ROW)
    k = 0
    mask = np.uint64(tab.shape[0] - 1)
    for i in range(n):
        # the entry of a row ahead starts loading while this row is handled: with many
        # flows the table outgrows the caches (measured 3-5x faster at 500 k flows)
        if track and i + _AHEAD < n:
            _prefetch(tab, _home(flow_id[i + _AHEAD], mask))
        fid = flow_id[i]
        a = app[i]
        # a passed row's rule (an allowed flow's pass rule) is no event: no lookup
        blocked = rule[i] if verdict[i] == Verdict.DROP else -1
        e = -1
        if track and fid != 0 and (blocked >= 0 or alert[i] >= 0 or a != APP_NONE):
            e = _find(tab, used, fid, True)
        if e >= 0 and a != APP_NONE and tab[e].app == APP_NONE:
            tab[e].app = a
        for kind in (K_ALLOWED, K_BLOCKED):
            cat = alert[i] if kind == K_ALLOWED else blocked
            if cat < 0:
                continue
            write = want_alert
            if e >= 0:
                st = tab[e]
                st.alerts += 1
                if kind == K_BLOCKED:
                    st.pkts_blocked += 1
                    write = write and st.blocked != cat
                    if write:
                        st.blocked = cat
                else:
                    write = write and st.allowed != cat
                    if write:
                        st.allowed = cat
                if write:
                    st.logged += 1
            if write:
                ev_row[k], ev_kind[k], ev_cat[k] = i, kind, cat
                k += 1
        if name_id[i] >= 0:
            kind = -1
            if (a == APP_TLS or a == APP_QUIC) and want_tls:
                kind = K_TLS
            elif a == APP_HTTP and want_http:
                kind = K_HTTP
            elif a == APP_DNS and want_dns:
                kind = K_DNS
            if kind >= 0:
                ev_row[k], ev_kind[k], ev_cat[k] = i, kind, -1
                k += 1
    return k


@njit(cache=True, nogil=True)
def _take(tab, used, fids, pkts_blocked, alerts, logged, app):
    """The state of ended flows `fids` (zeros if none), removed from the table."""
    for r in range(fids.shape[0]):
        j = _find(tab, used, fids[r], False) if fids[r] != 0 else -1
        if j < 0:
            pkts_blocked[r], alerts[r], logged[r], app[r] = 0, 0, 0, 0
            continue
        s = tab[j]
        pkts_blocked[r], alerts[r], logged[r], app[r] = s.pkts_blocked, s.alerts, s.logged, s.app
        _delete(tab, used, j)


class FlowState:
    """What EVE remembers per flow between its packets and its end (see _select)."""

    def __init__(self, size: int = _MIN_TABLE) -> None:
        self.tab = np.zeros(size, STATE_DTYPE)
        self.used = np.zeros(1, np.int64)

    def reserve(self, more: int) -> None:
        """Room for `more` new flows at a load of at most 1/2."""
        size = self.tab.shape[0]
        while 2 * (int(self.used[0]) + more) > size:
            size *= 2
        if size != self.tab.shape[0]:
            new = np.zeros(size, STATE_DTYPE)
            _rehash(self.tab, new, self.used)
            self.tab = new

    def take(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(pkts_blocked, alerts, logged, app) of ended flows, forgotten here."""
        m = len(fids)
        out = (np.zeros(m, np.uint64), np.zeros(m, np.uint64), np.zeros(m, np.uint32),
               np.zeros(m, np.uint8))
        _take(self.tab, self.used, np.ascontiguousarray(fids, np.uint64), *out)
        return out


# --- formatting ----------------------------------------------------------------------------

def _timestamps(ts_ns: np.ndarray) -> list[str]:
    """Suricata's timestamp format (microseconds, UTC offset) for each time."""
    us = (ts_ns.astype(np.int64) // 1000).astype("datetime64[us]")
    return [t + "+0000" for t in np.datetime_as_string(us, unit="us").tolist()]


def _addresses(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    """Addresses as Suricata prints them: IPv4-mapped ones (how IPv4 is kept) as IPv4,
    IPv6 as eight groups of four hex digits (Suricata 7 does not compress)."""
    raw = np.empty((len(hi), 2), ">u8")
    raw[:, 0], raw[:, 1] = hi, lo
    data = raw.tobytes()
    v4 = ((hi == 0) & (lo >> np.uint64(32) == 0xFFFF)).tolist()
    ntoa = socket.inet_ntoa
    return [ntoa(data[16 * j + 12:16 * j + 16]) if m else
            ":".join(data[p:p + 2].hex() for p in range(16 * j, 16 * j + 16, 2)) for j, m in enumerate(v4)]


_GWLB_WIRE = np.dtype([("eni", ">u8"), ("attach", ">u8"), ("cookie", ">u4")])


def _gwlb(eni: np.ndarray, attach: np.ndarray, cookie: np.ndarray) -> list[dict]:
    """The gwlb objects: the options' bytes in hex, as on the wire (one hex() for all)."""
    raw = np.empty(len(eni), _GWLB_WIRE)
    raw["eni"], raw["attach"], raw["cookie"] = eni, attach, cookie
    h = raw.tobytes().hex()
    w = 2 * _GWLB_WIRE.itemsize
    return [{"endpoint_id": h[p:p + 16], "attachment_id": h[p + 16:p + 32], "flow_cookie": h[p + 32:p + w]}
            for p in range(0, len(h), w)]


def _tls_version(v: int) -> str:
    if v >> 8 == 0x7F:
        return f"TLS 1.3 draft-{v & 0xFF}"
    return _TLS_VERSION.get(v, "UNDETERMINED")


def _text(name: bytes) -> str:
    # names are wire bytes (IDNA stays as sent); JSON needs text, and nothing is lost
    return name.decode("utf-8", "backslashreplace")


def signature_id(layer: str, group: str, ident: str) -> int:
    """The alert's signature_id for a catalog entry: the sid of a Suricata rule, else a
    stable number >= 0xF0000000 from where the rule is (not from its catalog position,
    which moves when the policy changes)."""
    if layer == "stateful" and ident.isdigit():
        return int(ident)
    return 0xF0000000 | (zlib.crc32(f"{layer}\0{group}\0{ident}".encode()) & 0x0FFFFFFF)


def alert_fields(origin: Origin) -> dict:
    """signature_id, rev, signature, category, severity, metadata of a catalog entry
    (rules.policy.Origin)."""
    sig, rev, severity = " ".join(origin.text.split()), 0, 3
    category = _LAYER_CATEGORY.get(origin.layer, origin.layer)
    if origin.layer == "stateful" and origin.ident.isdigit():
        r = idsrule.parse(origin.text)
        if r is not None:
            sig = r["msg"] or ""
            rev = int(r["rev"] or 0)
            category = r["classtype"] or ""
            if r["priority"] and str(r["priority"]).isdigit():
                severity = int(r["priority"])
    meta = {"layer": [origin.layer], "rule": [origin.ident]}
    if origin.group:
        meta["group"] = [origin.group]
    if origin.file:
        meta["source"] = [f"{origin.file}:{origin.line}" if origin.line else origin.file]
    return {"gid": 1, "signature_id": signature_id(origin.layer, origin.group, origin.ident), "rev": rev,
            "signature": sig, "category": category, "severity": severity, "metadata": meta}



def _five_tuple(ev: dict, src: str, dst: str, proto: int, sport: int, dport: int) -> None:
    """src_ip, src_port, dest_ip, dest_port, proto in EVE's key order (ports only where
    the protocol has them)."""
    ev["src_ip"] = src
    if proto in _PORTED:
        ev["src_port"] = sport
    ev["dest_ip"] = dst
    if proto in _PORTED:
        ev["dest_port"] = dport
    ev["proto"] = _PROTO.get(proto, str(proto))

class EveWriter:
    """EVE lines of a pipeline (`pipe`: engine.pipeline.Pipeline) into `path`.

    `types`: which events to write (subset of EVE_TYPES).  `firewall_name` and
    `availability_zone` fill AWS's wrapper fields.  Raises CaptureError when the file
    cannot be written, ValueError for an unknown type.  `events` counts the lines
    written per event type.
    """

    def __init__(self, path: str | Path, types: frozenset[str], pipe: Pipeline, *,
                 firewall_name: str = "egressd", availability_zone: str = "") -> None:
        unknown = set(types) - EVE_TYPES
        if unknown:
            raise ValueError(f"unknown EVE event types {sorted(unknown)}: choose from {sorted(EVE_TYPES)}")
        self.path = Path(path)
        self.types = frozenset(types)
        # the names stage, not the pipeline: pipe.eve -> self -> pipe would be a cycle
        # that keeps a finished pipeline's tables (hundreds of MB) until a full GC
        self._l7 = pipe.l7
        self.events: dict[str, int] = {t: 0 for t in sorted(EVE_TYPES)}
        self._name, self._zone = firewall_name, availability_zone
        catalog = pipe.policy.policy.catalog if pipe.policy else []
        self._alerts = [alert_fields(o) for o in catalog]
        # rule/alert columns are only written by the policy stage
        self._want_alert = "alert" in self.types and pipe.policy is not None
        self._track = pipe.policy is not None and bool(self.types & {"alert", "flow"})
        self._state = FlowState()
        self._pending: list[np.ndarray] = []
        self._ev = (np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.int32))
        special = self.path.exists() and not self.path.is_file()
        self._part = self.path if special else self.path.with_name(self.path.name + ".part")
        try:
            self._f = open(self._part, "wb", buffering=0)
        except OSError as e:
            raise CaptureError(f"{self.path}: cannot write: {e.strerror}") from None

    # --- pipeline entry points ---------------------------------------------------------

    def batch(self, b: PacketBatch) -> None:
        """Events of one decided batch (alerts, tls/http/dns), then the flow events of
        the flows that ended while it was tracked."""
        n = b.n
        lines: list[bytes] = []
        if n and (self._track or self.types & {"tls", "http", "dns"}):
            if len(self._ev[0]) < _EVENTS_PER_ROW * n:
                m = _EVENTS_PER_ROW * n
                self._ev = (np.zeros(m, np.int64), np.zeros(m, np.uint8), np.zeros(m, np.int32))
            self._state.reserve(n)
            t = self.types
            k = _select(n, b.verdict, b.rule, b.alert, b.flow_id, b.app, b.name_id, self._state.tab,
                        self._state.used, self._track, self._want_alert, "tls" in t, "http" in t,
                        "dns" in t, *self._ev)
            if k:
                lines += self._row_events(b, *(a[:k] for a in self._ev))
        lines += self._flow_events()
        self._write(lines)

    def flows(self, records: np.ndarray) -> None:
        """Flow events of ended flows (engine.flows RECORD_DTYPE), written after the
        current batch's rows (or at commit, for the final flush)."""
        if len(records) and (self._track or "flow" in self.types):
            self._pending.append(records.copy())

    def commit(self) -> None:
        """Write what is pending, flush, and put the file in place."""
        self._write(self._flow_events())
        try:
            self._f.close()
            if self._part != self.path:
                os.replace(self._part, self.path)
        except OSError as e:
            raise CaptureError(f"{self.path}: cannot write: {e.strerror}") from None

    def abort(self) -> None:
        """Remove the partial file."""
        try:
            self._f.close()
        except OSError:
            pass  # the run is failing already; its first error is the one to report
        if self._part != self.path:
            self._part.unlink(missing_ok=True)

    # --- events ------------------------------------------------------------------------

    def _write(self, lines: list[bytes]) -> None:
        # unbuffered, one write per batch: a full disk fails the batch that meets it,
        # while the pipeline can still abort every output
        if not lines:
            return
        data = memoryview(b"".join(lines))
        try:
            while data:
                data = data[self._f.write(data):]
        except OSError as e:
            raise CaptureError(f"{self.path}: cannot write: {e.strerror}") from None

    def _line(self, ts_ns: int, event: dict) -> bytes:
        """The log line around `event` (whose first key is its timestamp)."""
        self.events[event["event_type"]] += 1
        return orjson.dumps({"firewall_name": self._name, "availability_zone": self._zone,
                             "event_timestamp": str(ts_ns // 1_000_000_000), "event": event},
                            option=orjson.OPT_APPEND_NEWLINE)

    def _row_events(self, b: PacketBatch, rows: np.ndarray, kinds: np.ndarray,
                    cats: np.ndarray) -> list[bytes]:
        l7 = self._l7
        arena = l7.arena
        ts_ns = b.ts_ns[rows]
        fid = b.flow_id[rows]
        slot = b.flow[rows]
        s = np.where(slot >= 0, slot, 0)
        live = (slot >= 0) & (l7.fid[s] == fid)   # the slot still holds this flow
        f_name = np.where(live, l7.name[s], -1).tolist()
        f_app = np.where(live, l7.app[s], APP_NONE).tolist()
        f_ver = np.where(live, l7.tls_version[s], 0).tolist()
        stream_start = (live & (b.tcp_seq[rows] == l7.isn[s])).tolist()
        src = _addresses(b.src_hi[rows], b.src_lo[rows])
        dst = _addresses(b.dst_hi[rows], b.dst_lo[rows])
        times = _timestamps(ts_ns)
        gwlb = _gwlb(b.gwlb_eni[rows], b.gwlb_attach[rows], b.gwlb_cookie[rows])
        cols = [c.tolist() for c in (rows, kinds, cats, ts_ns, fid, b.proto[rows], b.sport[rows],
                                     b.dport[rows], b.icmp_type[rows], b.icmp_code[rows], b.dir[rows],
                                     b.app[rows], b.name_id[rows], b.qtype[rows], b.reason[rows],
                                     b.payload[rows], b.payload_len[rows])]
        na = l7.n_answers
        ans_at = np.searchsorted(l7.ans_row[:na], rows).tolist()
        names: dict[int, str | None] = {}

        def name(nid: int) -> str | None:
            if nid not in names:
                raw = arena.get(nid) if nid >= 0 else None
                names[nid] = None if raw is None else _text(raw)
            return names[nid]

        out = []
        for j, (i, kind, cat, t_ns, flow_id, proto, sport, dport, itype, icode, d, app, nid, qtype,
                reason, p, plen) in enumerate(zip(*cols)):
            is_dns = app == APP_DNS
            if app == APP_NONE:
                app = f_app[j]
            if nid < 0 and not is_dns and app != APP_DNS:
                nid = f_name[j]
            ev: dict = {"timestamp": times[j],
                        "flow_id": flow_id,   # every listed row has a flow (l7 and decide need one)
                        "event_type": "alert" if kind <= K_ALLOWED else ("tls", "http", "dns")[kind - K_TLS]}
            _five_tuple(ev, src[j], dst[j], proto, sport, dport)
            if proto in _ICMP:
                ev["icmp_type"], ev["icmp_code"] = itype, icode
            if app != APP_NONE:
                ev["app_proto"] = APP_NAMES[app]
            if kind <= K_ALLOWED:
                ev["direction"] = "to_client" if d else "to_server"
                base = self._alerts[cat]
                alert = {"action": _ALERT_ACTION[kind], **base}
                if kind == K_BLOCKED:
                    alert["metadata"] = {**base["metadata"], "reason": [REASON_NAMES[reason]]}
                ev["alert"] = alert
            text = name(nid)
            if text is not None and (app == APP_TLS or app == APP_QUIC):
                ev["tls"] = {"sni": text}
                if f_ver[j]:
                    ev["tls"]["version"] = _tls_version(f_ver[j])
            elif text is not None and app == APP_HTTP:
                ev["http"] = self._http(b, text, proto, stream_start[j], p, plen)
            elif text is not None and is_dns:
                ev["dns"] = self._dns(b, text, proto, stream_start[j], p, plen, qtype, i, ans_at[j])
            ev["gwlb"] = gwlb[j]
            out.append(self._line(t_ns, ev))
        return out

    def _http(self, b: PacketBatch, host: str, proto: int, start: bool, p: int, plen: int) -> dict:
        http = {"hostname": host}
        if proto == 6 and start and plen:
            m = _REQUEST_LINE.match(b.buf[p:p + min(plen, _REQUEST_PEEK)].tobytes())
            if m:
                http["url"] = _text(m.group(2))
                http["http_method"] = _text(m.group(1))
                http["protocol"] = _text(m.group(3))
        return http

    def _dns(self, b: PacketBatch, qname: str, proto: int, start: bool, p: int, plen: int,
             qtype: int, row: int, ans_at: int) -> dict:
        """A query or a response (UDP: its QR bit; TCP: only queries are parsed)."""
        hdr = None
        if proto == 17 and plen >= 4:
            hdr = b.buf[p:p + 4]
        elif proto == 6 and start and plen >= 6:   # after the 2-byte length
            hdr = b.buf[p + 2:p + 6]
        rrtype = _RRTYPE.get(qtype, str(qtype))
        txid = flags = None
        if hdr is not None:
            txid, flags = int(hdr[0]) << 8 | int(hdr[1]), int(hdr[2]) << 8 | int(hdr[3])
        if flags is None or not flags & 0x8000:
            q = {"type": "query", "rrname": qname, "rrtype": rrtype}
            if txid is not None:
                q["id"] = txid
            return {"query": [q]}
        l7 = self._l7
        answers = []
        k = ans_at
        end = k = ans_at
        while end < l7.n_answers and l7.ans_row[end] == row:
            end += 1
        for rdata, ttl in zip(_addresses(l7.ans_hi[k:end], l7.ans_lo[k:end]), l7.ans_ttl[k:end].tolist()):
            answers.append({"rrname": qname, "rrtype": "AAAA" if ":" in rdata else "A", "ttl": ttl,
                            "rdata": rdata})
        rcode = flags & 0xF
        answer = {"type": "answer", "id": txid, "flags": f"{flags:x}", "qr": True,
                  "rcode": _RCODE[rcode] if rcode < len(_RCODE) else str(rcode),
                  "rrname": qname, "rrtype": rrtype}
        if answers:
            answer["answers"] = answers
        return {"answer": answer}

    def _flow_events(self) -> list[bytes]:
        if not self._pending:
            return []
        recs = np.concatenate(self._pending)
        self._pending = []
        pkts_blocked, alerts, logged, app = self._state.take(recs["flow_id"])
        if "flow" not in self.types:
            return []
        src = _addresses(recs["src_hi"], recs["src_lo"])
        dst = _addresses(recs["dst_hi"], recs["dst_lo"])
        starts, ends = _timestamps(recs["first_ts"]), _timestamps(recs["last_ts"])
        gwlb = _gwlb(recs["eni"], recs["attach"], recs["cookie"])
        cols = [c.tolist() for c in (recs["flow_id"], recs["proto"], recs["sport"], recs["dport"],
                                     recs["first_ts"], recs["last_ts"], recs["pkts_toserver"],
                                     recs["pkts_toclient"], recs["bytes_toserver"],
                                     recs["bytes_toclient"], recs["state"], recs["flags"],
                                     recs["reason"], recs["verdict"], pkts_blocked, alerts, logged, app)]
        out = []
        for j, (flow_id, proto, sport, dport, t0, t1, p_ts, p_tc, b_ts, b_tc, state, flags, reason,
                verdict, blocked, raised, written, a) in enumerate(zip(*cols)):
            ev: dict = {"timestamp": ends[j], "flow_id": flow_id, "event_type": "flow"}
            _five_tuple(ev, src[j], dst[j], proto, sport, dport)
            if a != APP_NONE:
                ev["app_proto"] = APP_NAMES[a]
            if proto == 6:
                life = "closed" if state == CLOSED else (
                    "established" if state in (ESTABLISHED, FIN_WAIT) else "new")
            else:
                life = "established" if flags & F_SEEN_REPLY else "new"
            flow = {"pkts_toserver": p_ts, "pkts_toclient": p_tc, "bytes_toserver": b_ts,
                    "bytes_toclient": b_tc, "start": starts[j], "end": ends[j],
                    "age": t1 // 1_000_000_000 - t0 // 1_000_000_000, "state": life,
                    "reason": _END_REASON.get(reason, "unknown"), "alerted": raised > 0}
            if verdict == Verdict.DROP:
                flow["action"] = "drop"
            elif verdict == Verdict.PASS:
                flow["action"] = "pass"
            flow["pkts_blocked"], flow["alerts"], flow["alerts_logged"] = blocked, raised, written
            ev["flow"] = flow
            if proto == 6:
                tcp = {"state": _TCP_STATE.get(state, "none")}
                if flags & (F_FIN_INIT | F_FIN_RESP):
                    tcp["fin"] = True
                if flags & F_RST:
                    tcp["rst"] = True
                ev["tcp"] = tcp
            ev["gwlb"] = gwlb[j]
            out.append(self._line(t1, ev))
        return out
