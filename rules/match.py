"""Stage 5: decide every packet by the compiled policy, layer by layer.

Per packet, in the seed's order: network ACL (stateless, both directions), IPv6
egress-only, security group (stateful: judged once per flow on the initiator's view,
replies follow), DNS Firewall (each DNS query), Network Firewall stateless rules
(priority order; pass skips the stateful engine, forward goes on), then the stateful
engine (strict or action order, default actions).  The first layer that drops decides
and its rule is reported; a rule that passes a whole flow (security group, stateful
pass) or drops it is cached on the flow.

Names.  Each row is judged by what was known at that row: the l7 stage marks rows
that leave a name incomplete (L7_SEARCH_MORE) or end the search (L7_SEARCH_END), and
this stage follows them in row order.  A rule that needs the application layer
(`tls`, `http`, a name buffer) cannot be judged while the flow's first message is
still incomplete: it WAITS, and the packet is forwarded.  Real clients split their
ClientHello (Chromium's post-quantum key share, small MTUs); Suricata with the rules
AWS generates for an allowlist drops the first segment of such a ClientHello (its
`drop tls` rule matches once the protocol is detected) and breaks the allowed
connection; here the segment that completes a denied name and everything after it are
dropped, the earlier ones forwarded.  The wait is bounded (packets, bytes): past it the
flow is judged without a name, and that is counted.  Before the client sends any data
(the handshake), application rules do not match, as in Suricata: so drop_strict drops
a handshake no rule passes, drop_established lets it through.

A stateful evaluation is cached per flow and direction under a key of what it read
(established, name progress, application), so a long flow no rule decides costs one
table walk per change, not per packet.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressd.engine import tables
from egressd.engine.batch import ACT_DNS_NODATA, ACT_NONE, ACT_REJECT, PacketBatch
from egressd.engine.l7 import (APP_DNS, APP_HTTP, APP_NONE, APP_QUIC, APP_TLS, L7_ECH,
                               L7_SEARCH_END, L7_SEARCH_MORE, L7Table, _arena_valid)
from egressd.engine.flows import FlowTable, _prefetch
from egressd.engine.parse import PF_FRAGMENT, PF_ICMP_ERROR, PF_REASSEMBLED, PROTO_TCP, PROTO_UDP
from egressd.engine.reasons import Reason, Verdict
from egressd.rules import compile as C
from egressd.rules.compile import CompiledPolicy
from egressd.rules.fqdn import lookup
from egressd.rules.resolved import BUCKET, TAG_SET, Bindings, bind, bound, name_key

# per-flow name progress
_L7_NONE, _L7_COLLECT, _L7_ENDED = 0, 1, 2
# per-flow final decision
_OPEN, _PASSED, _DROPPED = 0, 1, 2
# evaluation outcome
_NOMATCH, _MATCH, _WAIT = 0, 1, 2
_PASS, _DROP = np.uint8(Verdict.PASS), np.uint8(Verdict.DROP)
_AHEAD = 8   # prefetch distance, rows

(K_WAITED, K_WITHOUT_NAME, K_FLOWS_PASSED, K_FLOWS_DROPPED, K_EVALUATIONS,
 K_ALERTS) = range(6)
COUNTER_NAMES = ("packets_forwarded_waiting_for_name", "flows_judged_without_name",
                 "flows_passed", "flows_dropped", "stateful_evaluations", "alerts")


FLOW_DTYPE = np.dtype([
    ("fid", np.uint64),           # the flow this row is about (slots are reused)
    ("name", np.int64),           # names arena id of the flow's name, -1 none
    ("rule", np.int32),           # catalog id of the final decision
    ("crule", np.int32, (2,)),    # cached evaluation per direction: rule, reason, verdict, key
    ("reason", np.uint16),
    ("creason", np.uint16, (2,)),
    ("wait_pkts", np.uint32),
    ("wait_bytes", np.uint32),
    ("final", np.uint8),          # _OPEN / _PASSED / _DROPPED
    ("sg", np.uint8),             # security group: 0 not judged, 1 allowed, 2 denied
    ("l7", np.uint8),             # _L7_*
    ("app", np.uint8),
    ("ckey", np.uint8, (2,)),
    ("cverdict", np.uint8, (2,)),
    ("calert", np.int32, (2,)),   # cached alert that repeats on every packet, -1 none
], align=True)
assert FLOW_DTYPE.itemsize == 64    # one cache line a flow


# --- sets -------------------------------------------------------------------------------

@njit(cache=True, nogil=True, _nrt=False)
def _in_aset(t, k, hi, lo):
    """Address (hi, lo) in address set k (-1 any, -2 none)."""
    if k == -1:
        return True
    if k < 0:
        return False
    a, e = t.aset[k, 0], t.aset[k, 1]
    # last range starting at or below the address
    while e - a > 1:
        m = (a + e) // 2
        if t.a_lo_hi[m] < hi or (t.a_lo_hi[m] == hi and t.a_lo_lo[m] <= lo):
            a = m
        else:
            e = m
    if a >= t.aset[k, 1]:
        return False
    above_lo = t.a_lo_hi[a] < hi or (t.a_lo_hi[a] == hi and t.a_lo_lo[a] <= lo)
    below_hi = hi < t.a_hi_hi[a] or (hi == t.a_hi_hi[a] and lo <= t.a_hi_lo[a])
    return above_lo and below_hi


@njit(cache=True, nogil=True, _nrt=False)
def _in_pset(t, k, port):
    if k < 0:
        return True
    a, e = t.pset[k, 0], t.pset[k, 1]
    while e - a > 1:
        m = (a + e) // 2
        if t.p_lo[m] <= port:
            a = m
        else:
            e = m
    return a < t.pset[k, 1] and t.p_lo[a] <= port <= t.p_hi[a]


@njit(cache=True, nogil=True, _nrt=False)
def _header(t, r, proto, s_hi, s_lo, sp, d_hi, d_lo, dp, tflags):
    """Rule r's protocol, TCP flags, addresses and ports match the packet (either way
    round for a bidirectional rule).  Ports only exist for TCP and UDP."""
    pk = t.r_proto[r]
    if pk >= 0 and t.protos[pk, proto] == 0:
        return False
    mask = t.r_tcp_mask[r]
    if mask and (proto != PROTO_TCP or (tflags & mask) != t.r_tcp_flags[r]):
        return False
    ported = proto == PROTO_TCP or proto == PROTO_UDP
    if (t.r_sport[r] >= 0 or t.r_dport[r] >= 0) and not ported:
        return False
    if (_in_aset(t, t.r_src[r], s_hi, s_lo) and _in_aset(t, t.r_dst[r], d_hi, d_lo)
            and _in_pset(t, t.r_sport[r], sp) and _in_pset(t, t.r_dport[r], dp)):
        return True
    return bool(t.r_bidir[r]) and (
        _in_aset(t, t.r_src[r], d_hi, d_lo) and _in_aset(t, t.r_dst[r], s_hi, s_lo)
        and _in_pset(t, t.r_sport[r], dp) and _in_pset(t, t.r_dport[r], sp))


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _qtype_ok(t, r, qt):
    """DNS Firewall rule r covers query type qt (no list: every type)."""
    a, e = t.r_qtype[r, 0], t.r_qtype[r, 1]
    if a == e:
        return True
    for k in range(a, e):
        if t.q_types[k] == qt:
            return True
    return False


@njit(cache=True, nogil=True, _nrt=False)
def _first_header_match(t, layer, proto, s_hi, s_lo, sp, d_hi, d_lo, dp, tflags):
    """First rule of `layer` whose header matches, -1 none (stateless layers)."""
    for r in range(t.layer[layer, 0], t.layer[layer, 1]):
        if _header(t, r, proto, s_hi, s_lo, sp, d_hi, d_lo, dp, tflags):
            return r
    return -1


# --- names ------------------------------------------------------------------------------

@njit(cache=True, nogil=True, _nrt=False)
def _name_hits(fq, arena, ent_off, ent_len, ast, nid, hits, owners, gen):
    """Look name nid up; False if the ring has gone over it (then it matches nothing)."""
    if nid < 0 or not _arena_valid(arena, ent_off, ast, nid):
        return False
    k = nid % ent_off.shape[0]
    lookup(arena, ent_off[k] % arena.shape[0], ent_len[k], *fq, hits, owners, gen)
    return True


@njit(cache=True, nogil=True, _nrt=False)
def _conds(t, r, app, have, hits, gen):
    """Rule r's name conditions on a flow of application `app` whose name's sets are
    marked `gen` in hits (`have`: there is a name)."""
    for c in range(t.r_cond[r, 0], t.r_cond[r, 1]):
        buf = t.c_buffer[c]
        fits = ((buf == C.BUF_SNI and app == APP_TLS) or (buf == C.BUF_HOST and app == APP_HTTP)
                or (buf == C.BUF_DNS and app == APP_DNS))
        if not (fits and have):  # no such buffer: the rule cannot match, negated or not
            return False
        if (hits[t.c_dset[c]] == gen) == bool(t.c_neg[c]):
            return False
    return True


@njit(cache=True, nogil=True, _nrt=False)
def _stateful(t, rows, proto, s_hi, s_lo, sp, d_hi, d_lo, dp, direction, est, app, l7,
              have, hits, owners, gen, bt, r_hi, r_lo, now, quic_as_tls):
    """Walk the stateful rules `rows` in order: (outcome, rule, catalog id of the rule, catalog
    id of the first alert, whether that alert repeats on every packet: it needs no
    application data).  (r_hi, r_lo) is the connection's responder, for resolved-domain
    rules.  `quic_as_tls`: a QUIC flow judged by the TLS rules, which then take it for
    TLS over an established TCP connection (what their protocol and flow keyword say)."""
    alert = -1
    repeat = False
    for k in range(rows.shape[0]):
        r = rows[k]
        ra = t.r_app[r]
        p_r, est_r = proto, est
        if quic_as_tls and ra == APP_TLS:
            p_r, est_r = PROTO_TCP, 1
        fd = t.r_flowdir[r]
        if (fd == 1 and direction != 0) or (fd == 2 and direction != 1):
            continue
        e = t.r_est[r]
        if (e == 1 and not est_r) or (e == 2 and est_r):
            continue
        needs_app = ra != 0 or t.r_cond[r, 1] > t.r_cond[r, 0]
        # what the application layer rules out, before the (dearer) header
        if needs_app and (l7 == _L7_NONE or (ra != 0 and app != ra
                                             and (app != APP_NONE or l7 != _L7_COLLECT))):
            continue
        if not _header(t, r, p_r, s_hi, s_lo, sp, d_hi, d_lo, dp, 0):
            continue
        rs = t.r_resolved[r]
        if rs >= 0 and not bound(bt, r_hi, r_lo, TAG_SET | np.uint64(rs), now):
            continue
        if needs_app:
            if l7 == _L7_COLLECT:
                return _WAIT, r, -1, alert, repeat
            if not _conds(t, r, app, have, hits, gen):
                continue
        cat = owners[t.c_dset[t.r_cond[r, 0]]] if t.r_owned[r] else t.r_catalog[r]
        if t.r_action[r] == C.A_ALERT or t.r_also_alert[r]:
            if alert < 0:
                alert = cat
                repeat = not needs_app
            if t.r_action[r] == C.A_ALERT:
                continue
        return _MATCH, r, cat, alert, repeat
    return _NOMATCH, -1, -1, alert, repeat


# --- the stage --------------------------------------------------------------------------

@njit(cache=True, nogil=True, _nrt=False)
def _decide(n, t, fq, verdict, reason, rule_col, alert_col, action, flow, flow_id, dirs, est_col, pflags,
            proto_col, src_hi, src_lo, dst_hi, dst_lo, sport, dport, tcp_flags, ipver,
            payload_len, app_col, name_col, l7f, qtype, ts_ns, slots, fp, arena, ent_off, ent_len, ast,
            hits, owners, gen0, hit_counts, counters, reason_counts, bt, learn, resolved_sets, ttl_max_ns,
            ans_row, ans_name, ans_hi, ans_lo, ans_ttl, n_ans, all_rows, plain_rows, name_apps):
    """Returns the last generation number used in `hits`.  `all_rows`: the stateful
    rules in order; `plain_rows`: those of them that read no application layer;
    `name_apps`: bit APP_x set when a stateful rule reads the name of application x."""
    gen = gen0
    cur_name = np.int64(-2)
    ak = 0
    home = t.home[0]
    has_nacl = (t.flags & C.F_NACL) != 0
    has_sg = (t.flags & C.F_SG) != 0
    has_stateless = (t.flags & C.F_STATELESS) != 0
    egress_only = (t.flags & C.F_EGRESS_ONLY) != 0
    quic_tls = (t.flags & C.F_QUIC_AS_TLS) != 0
    strict = (t.flags & C.F_ORDER_STRICT) != 0
    s0, s1 = t.layer[C.L_STATEFUL, 0], t.layer[C.L_STATEFUL, 1]
    d0, d1 = t.layer[C.L_DNS, 0], t.layer[C.L_DNS, 1]
    for i in range(n + 1):
        # DNS answers of the rows decided so far (forwarded responses only) are learned
        # before the next row is judged
        while learn and ak < n_ans and ans_row[ak] < i:
            if verdict[ans_row[ak]] == _PASS:
                gen, cur_name = _learn(bt, fq, arena, ent_off, ent_len, ast, hits, owners, gen, cur_name,
                                       resolved_sets, ans_name[ak], ans_hi[ak], ans_lo[ak],
                                       ts_ns[ans_row[ak]] + min(max(np.int64(ans_ttl[ak]), 1) * 1_000_000_000,
                                                                ttl_max_ns))
            ak += 1
        if i == n:
            break
        if i + _AHEAD < n and flow[i + _AHEAD] >= 0:  # its cache line, while this row is judged
            _prefetch(fp, flow[i + _AHEAD])
        rule_col[i] = -1
        alert_col[i] = -1
        action[i] = ACT_NONE
        if verdict[i] != Verdict.PENDING:
            continue
        pr = proto_col[i]
        sh, sl, dh, dl = src_hi[i], src_lo[i], dst_hi[i], dst_lo[i]
        sp, dp = sport[i], dport[i]
        tf = tcp_flags[i]
        s = flow[i]
        if s < 0:  # a fragment passed uninspected (fragment default action pass)
            verdict[i] = Verdict.PASS
            continue
        f = fp[s]
        if f.fid != flow_id[i]:  # a new flow in this slot
            f.fid = flow_id[i]
            f.final = _OPEN
            f.rule = -1
            f.sg = 0
            f.l7 = _L7_NONE
            f.app = APP_NONE
            f.name = -1
            f.wait_pkts = 0
            f.wait_bytes = 0
            f.ckey[0] = 0
            f.ckey[1] = 0
        d = dirs[i]
        icmp_error = (pflags[i] & PF_ICMP_ERROR) != 0

        # 1. network ACL: stateless, every packet, both ways
        if has_nacl:
            denied = -1
            if _in_aset(t, home, sh, sl):
                r = _first_header_match(t, C.L_NACL_OUT, pr, sh, sl, sp, dh, dl, dp, tf)
                if r < 0:
                    denied = C.C_NACL_OUT_DENY
                elif t.r_action[r] == C.A_DROP:
                    denied = t.r_catalog[r]
            if denied < 0 and _in_aset(t, home, dh, dl):
                r = _first_header_match(t, C.L_NACL_IN, pr, sh, sl, sp, dh, dl, dp, tf)
                if r < 0:
                    denied = C.C_NACL_IN_DENY
                elif t.r_action[r] == C.A_DROP:
                    denied = t.r_catalog[r]
            if denied >= 0:
                _drop(i, verdict, reason, rule_col, Reason.NACL_DENY, denied, hit_counts,
                      reason_counts)
                continue

        # the connection's initiator -> responder view (rows from the responder swapped)
        if d == 0:
            ih, il, ip_, rh, rl, rp = sh, sl, sp, dh, dl, dp
        else:
            ih, il, ip_, rh, rl, rp = dh, dl, dp, sh, sl, sp

        # 2. IPv6 egress-only internet gateway: connections opened from outside are refused
        if egress_only and ipver[i] == 6 and not _in_aset(t, home, ih, il) and f.final != _DROPPED:
            f.final = _DROPPED
            f.rule = C.C_EGRESS_ONLY
            f.reason = Reason.EGRESS_ONLY
            counters[K_FLOWS_DROPPED] += 1

        # 3. security group: allow-only, judged once per connection, replies follow
        if has_sg and f.sg == 0 and not icmp_error and f.final != _DROPPED:
            layer = C.L_SG_EGRESS if _in_aset(t, home, ih, il) else C.L_SG_INGRESS
            r = _first_header_match(t, layer, pr, ih, il, ip_, rh, rl, rp, 0)
            f.sg = 1 if r >= 0 else 2
            if r < 0:
                f.final = _DROPPED
                f.rule = C.C_SG_NONE
                f.reason = Reason.SECURITY_GROUP
                counters[K_FLOWS_DROPPED] += 1

        if f.final == _DROPPED:
            _drop(i, verdict, reason, rule_col, f.reason, f.rule, hit_counts, reason_counts)
            continue

        # follow the flow's name progress row by row
        fl = l7f[i]
        was_ended = f.l7 == _L7_ENDED
        a = app_col[i]
        if a != APP_NONE and a != APP_DNS:
            f.app = APP_TLS if (a == APP_QUIC and quic_tls) else a
        if fl & L7_SEARCH_MORE and f.l7 != _L7_ENDED:
            f.l7 = _L7_COLLECT
        if fl & L7_SEARCH_END:
            f.l7 = _L7_ENDED
        if name_col[i] >= 0 and a != APP_DNS:
            # a name is judged at the row that completes it, even if the search goes on
            # (a second ClientHello, the TLS inside an HTTP CONNECT); a new name reopens
            # a flow a stateful rule passed
            f.name = name_col[i]
            f.l7 = _L7_ENDED
            f.ckey[0] = 0
            f.ckey[1] = 0
            if f.final == _PASSED:
                f.final = _OPEN
        if f.l7 == _L7_COLLECT and d == 0 and payload_len[i] > 0:
            f.wait_pkts += 1
            f.wait_bytes += payload_len[i]
            if f.wait_pkts > t.wait_packets or f.wait_bytes > t.wait_bytes:
                f.l7 = _L7_ENDED
                counters[K_WITHOUT_NAME] += 1
                alert_col[i] = C.C_NAME_WAIT

        # 4. DNS Firewall: each query, lowest priority first
        is_dns = a == APP_DNS
        if is_dns and d == 0 and name_col[i] >= 0 and d1 > d0:
            nid = name_col[i]
            if nid != cur_name:
                gen += 1
                cur_name = nid
                _name_hits(fq, arena, ent_off, ent_len, ast, nid, hits, owners, gen)
            blocked = False
            for r in range(d0, d1):
                if hits[t.c_dset[t.r_cond[r, 0]]] != gen or not _qtype_ok(t, r, qtype[i]):
                    continue
                act = t.r_action[r]
                if act == C.A_ALERT:
                    if alert_col[i] < 0:
                        alert_col[i] = t.r_catalog[r]
                    continue
                if act == C.A_DROP:
                    _drop(i, verdict, reason, rule_col, Reason.DNS_FIREWALL_BLOCK, t.r_catalog[r],
                          hit_counts, reason_counts)
                    action[i] = ACT_DNS_NODATA + t.r_aux[r]  # DNS_RESPONSES order
                    blocked = True
                break
            if blocked:
                continue

        # 5. Network Firewall stateless rules, per packet
        if has_stateless:
            r = _first_header_match(t, C.L_STATELESS, pr, sh, sl, sp, dh, dl, dp, tf)
            fragment = (pflags[i] & (PF_FRAGMENT | PF_REASSEMBLED)) != 0
            if r >= 0:
                act, cat = t.r_action[r], t.r_catalog[r]
                why = Reason.STATELESS_DROP
            else:
                act = t.stateless_frag_default if fragment else t.stateless_default
                cat = C.C_STATELESS_FRAG_DEFAULT if fragment else C.C_STATELESS_DEFAULT
                why = Reason.STATELESS_DEFAULT_DROP
            if act == C.A_DROP:
                _drop(i, verdict, reason, rule_col, why, cat, hit_counts, reason_counts)
                continue
            if act == C.A_PASS:
                verdict[i] = Verdict.PASS
                rule_col[i] = cat
                hit_counts[cat] += 1
                continue

        # 6. stateful engine
        if f.final == _PASSED:
            verdict[i] = Verdict.PASS
            rule_col[i] = f.rule
            if f.rule >= 0:
                hit_counts[f.rule] += 1
            continue
        if icmp_error:  # related to the flow: follows its verdict, judged by its packets
            verdict[i] = Verdict.PASS
            continue
        # ECH: the ClientHello that completes the name tells
        if fl & L7_ECH and not was_ended and f.l7 == _L7_ENDED and t.ech != 0:
            if t.ech == 2:
                f.final = _DROPPED
                f.rule = C.C_ECH
                f.reason = Reason.ECH_OFFERED
                counters[K_FLOWS_DROPPED] += 1
                _drop(i, verdict, reason, rule_col, Reason.ECH_OFFERED, C.C_ECH, hit_counts,
                      reason_counts)
                continue
            alert_col[i] = C.C_ECH
        # the SNI was resolved to this destination by a DNS answer seen here
        if (t.sni_resolution != 0 and name_col[i] >= 0 and (a == APP_TLS or a == APP_QUIC)
                and not _sni_resolved(bt, arena, ent_off, ent_len, ast, name_col[i], rh, rl, ts_ns[i])):
            if t.sni_resolution == 2:
                f.final = _DROPPED
                f.rule = C.C_SNI_RESOLUTION
                f.reason = Reason.SNI_NOT_RESOLVED
                counters[K_FLOWS_DROPPED] += 1
                _drop(i, verdict, reason, rule_col, Reason.SNI_NOT_RESOLVED, C.C_SNI_RESOLUTION,
                      hit_counts, reason_counts)
                continue
            alert_col[i] = C.C_SNI_RESOLUTION
        if s1 == s0 and not strict:
            verdict[i] = Verdict.PASS
            continue
        e = est_col[i]
        l7 = _L7_ENDED if is_dns else f.l7
        fapp = APP_DNS if is_dns else f.app
        key = np.uint8(1 + d + 2 * e + 4 * l7 + 16 * fapp)
        if not is_dns and f.ckey[d] == key:
            cv = f.cverdict[d]
            verdict[i] = cv
            if cv == _DROP:
                reason[i] = f.creason[d]
                reason_counts[reason[i]] += 1
            rule_col[i] = f.crule[d]
            if rule_col[i] >= 0:
                hit_counts[rule_col[i]] += 1
            if f.calert[d] >= 0 and alert_col[i] < 0:
                alert_col[i] = f.calert[d]
                counters[K_ALERTS] += 1
            continue
        nid = name_col[i] if is_dns else f.name
        have = nid >= 0
        # looked up only if a stateful rule reads this application's name (most DNS
        # queries meet only TLS and HTTP rules)
        if have and nid != cur_name and (name_apps >> fapp) & 1:
            gen += 1
            cur_name = nid
            have = _name_hits(fq, arena, ent_off, ent_len, ast, nid, hits, owners, gen)
        counters[K_EVALUATIONS] += 1
        # before a flow's application is known, no rule that reads it can match
        out, r, rcat, al, repeat = _stateful(t, plain_rows if l7 == _L7_NONE else all_rows,
                                             pr, sh, sl, sp, dh, dl, dp, d, e, fapp, l7,
                                             have, hits, owners, gen, bt, rh, rl, ts_ns[i],
                                             quic_tls and pr == PROTO_UDP and fapp == APP_TLS)
        calert = al if repeat else -1
        if al >= 0 and alert_col[i] < 0:
            alert_col[i] = al
            counters[K_ALERTS] += 1
        v = _PASS
        why = np.uint16(Reason.OK)
        cat = -1
        final = _OPEN
        if out == _MATCH:
            cat = rcat
            act = t.r_action[r]
            if act == C.A_PASS:
                final = _PASSED
            else:
                final = _DROPPED
                v = _DROP
                why = np.uint16(Reason.STATEFUL_REJECT if act == C.A_REJECT else Reason.STATEFUL_DROP)
                if act == C.A_REJECT:
                    action[i] = ACT_REJECT
        elif out == _WAIT:
            counters[K_WAITED] += 1
        elif strict:
            dflt = t.defaults
            # established packets the direction-limited defaults judge
            toward = e and d == 0
            if (dflt & C.D_DROP_STRICT or (dflt & C.D_DROP_EST and e)
                    or (dflt & C.D_DROP_EST_TO_SERVER and toward)):
                v = _DROP
                why = np.uint16(Reason.STATEFUL_DEFAULT_DROP)
                cat = C.C_STATEFUL_DEFAULT
            elif (dflt & C.D_ALERT_STRICT or (dflt & C.D_ALERT_EST and e)
                  or (dflt & C.D_ALERT_EST_TO_SERVER and toward)):
                calert = C.C_STATEFUL_DEFAULT
                if alert_col[i] < 0:
                    alert_col[i] = calert
                    counters[K_ALERTS] += 1
        verdict[i] = v
        reason[i] = why
        if v == _DROP:
            reason_counts[why] += 1
        rule_col[i] = cat
        if cat >= 0:
            hit_counts[cat] += 1
        # a DNS query decided by its own name leaves the flow's next query open
        if final != _OPEN and not (is_dns and t.r_cond[r, 1] > t.r_cond[r, 0]):
            f.final = final
            f.rule = cat
            f.reason = why
            counters[K_FLOWS_PASSED if final == _PASSED else K_FLOWS_DROPPED] += 1
            slots[s].verdict = v
            slots[s].rule = cat
        elif not is_dns and out != _WAIT:
            f.ckey[d] = key
            f.cverdict[d] = v
            f.creason[d] = why
            f.crule[d] = cat
            f.calert[d] = calert
    return gen


@njit(cache=True, nogil=True, _nrt=False)
def _learn(bt, fq, arena, ent_off, ent_len, ast, hits, owners, gen, cur_name, resolved_sets, nid,
           hi, lo, expiry):
    """Bind address (hi, lo) to name nid and to the resolved-domain sets it is in."""
    if not _arena_valid(arena, ent_off, ast, nid):
        return gen, cur_name
    k = nid % ent_off.shape[0]
    bind(bt, hi, lo, name_key(bt.seed[0], arena, ent_off[k] % arena.shape[0], ent_len[k]), expiry)
    if resolved_sets.shape[0]:
        if nid != cur_name:
            gen += 1
            cur_name = nid
            _name_hits(fq, arena, ent_off, ent_len, ast, nid, hits, owners, gen)
        for rs in resolved_sets:
            if hits[rs] == gen:
                bind(bt, hi, lo, TAG_SET | np.uint64(rs), expiry)
    return gen, cur_name


@njit(cache=True, nogil=True, _nrt=False)
def _sni_resolved(bt, arena, ent_off, ent_len, ast, nid, hi, lo, now):
    if not _arena_valid(arena, ent_off, ast, nid):
        return False
    k = nid % ent_off.shape[0]
    return bound(bt, hi, lo, name_key(bt.seed[0], arena, ent_off[k] % arena.shape[0], ent_len[k]), now)


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _drop(i, verdict, reason, rule_col, why, cat, hit_counts, reason_counts):
    verdict[i] = Verdict.DROP
    reason[i] = why
    reason_counts[why] += 1
    rule_col[i] = cat
    hit_counts[cat] += 1


class PolicyStage:
    """The decide stage of one pipeline: the compiled policy and its per-flow state."""

    def __init__(self, policy: CompiledPolicy, flow_capacity: int) -> None:
        self.policy = policy
        self.state = tables.zeros(flow_capacity, FLOW_DTYPE)
        self.hits = np.zeros(max(policy.names.n_sets, 1), np.int64)
        self.owners = np.zeros(max(policy.names.n_sets, 1), np.int64)
        self.gen = 0
        self.rule_hits = np.zeros(len(policy.catalog), np.uint64)
        self.counters_ = np.zeros(len(COUNTER_NAMES), np.int64)
        t = policy.tables
        self.learn = t.sni_resolution != 0 or bool(policy.resolved_sets)
        self.bindings = Bindings.empty(policy.options.binding_capacity if self.learn else BUCKET)
        self.resolved_sets = np.array(policy.resolved_sets, np.int64)
        self.ttl_max_ns = int(policy.options.resolved_domain_ttl_max or 0) * 1_000_000_000
        # the handshake of every flow is judged before its application is known: then
        # only the rules that read none of it need walking (none, for a domain allowlist)
        self.all_rows = np.arange(t.layer[C.L_STATEFUL, 0], t.layer[C.L_STATEFUL, 1], dtype=np.int64)
        reads_app = (t.r_app[self.all_rows] != 0) | (t.r_cond[self.all_rows, 1] > t.r_cond[self.all_rows, 0])
        self.plain_rows = self.all_rows[~reads_app]
        conds = [c for r in self.all_rows for c in range(t.r_cond[r, 0], t.r_cond[r, 1])]
        buffers = {int(t.c_buffer[c]) for c in conds}
        self.name_apps = sum(1 << app for app, buf in ((APP_TLS, C.BUF_SNI), (APP_HTTP, C.BUF_HOST),
                                                      (APP_DNS, C.BUF_DNS)) if buf in buffers)

    def decide(self, b: PacketBatch, flows: FlowTable, l7: L7Table, counts: np.ndarray) -> None:
        """Decide batch `b`; drops are added to `counts` (per Reason)."""
        a = l7.arena
        self.gen = int(_decide(
            b.n, self.policy.tables, self.policy.names.arrays(), b.verdict, b.reason, b.rule,
            b.alert, b.action, b.flow, b.flow_id, b.dir, b.est, b.pflags, b.proto, b.src_hi, b.src_lo,
            b.dst_hi, b.dst_lo, b.sport, b.dport, b.tcp_flags, b.ipver, b.payload_len, b.app,
            b.name_id, b.l7_flags, b.qtype, b.ts_ns, flows.slots, self.state, a.bytes, a.off, a.len, a.state,
            self.hits, self.owners, self.gen, self.rule_hits, self.counters_, counts, self.bindings, self.learn,
            self.resolved_sets, self.ttl_max_ns, l7.ans_row, l7.ans_name, l7.ans_hi, l7.ans_lo,
            l7.ans_ttl, l7.n_answers, self.all_rows, self.plain_rows, self.name_apps))

    def counters(self) -> dict:
        out = {name: int(v) for name, v in zip(COUNTER_NAMES, self.counters_)}
        if self.learn:
            out["bindings_learned"], out["bindings_evicted"] = (int(v) for v in self.bindings.counters)
        out["rule_hits"] = self.top_rules()
        return out

    def top_rules(self, k: int = 20) -> list[dict]:
        order = np.argsort(-self.rule_hits.astype(np.int64), kind="stable")[:k]
        cat = self.policy.catalog
        return [{"layer": cat[j].layer, "group": cat[j].group, "rule": cat[j].ident,
                 "hits": int(self.rule_hits[j])} for j in order if self.rule_hits[j]]
