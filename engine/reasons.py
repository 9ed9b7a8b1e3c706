"""Every reason a packet can be dropped, in one table.

Kernels record a reason code per packet and count it per batch (VPP's error
counters, Suricata's decoder events); the stats JSON reports the names.  Codes are
stable: append new ones, never renumber.
"""
from enum import IntEnum

# (name, stage, meaning).  Order defines the numeric code.
TABLE: tuple[tuple[str, str, str], ...] = (
    ("ok", "-", "not dropped"),
    ("capture_truncated", "capture", "captured length shorter than the packet on the wire (snaplen)"),
    ("link_unsupported", "link", "link-layer type egressd does not decode"),
    ("link_truncated", "link", "frame shorter than its link-layer header"),
    ("link_not_ip", "link", "link layer carries neither IPv4 nor IPv6"),
    ("too_many_vlan_tags", "link", "more than two stacked VLAN tags"),
    ("outer_not_ipv4", "outer", "outer network layer is not IPv4 (GWLB always sends IPv4)"),
    ("outer_ip_truncated", "outer", "frame ends inside the outer IPv4 header"),
    ("outer_ip_bad_header", "outer", "outer IPv4 header length or total length field invalid"),
    ("outer_ip_bad_length", "outer", "outer IPv4 total length runs past the captured frame"),
    ("outer_ip_bad_checksum", "outer", "outer IPv4 header checksum wrong"),
    ("outer_ip_fragment", "outer", "outer IPv4 packet is a fragment"),
    ("outer_not_udp", "outer", "outer IPv4 payload is not UDP"),
    ("udp_truncated", "outer", "outer IPv4 payload shorter than a UDP header"),
    ("udp_bad_length", "outer", "UDP length field disagrees with the IPv4 payload"),
    ("not_geneve_port", "outer", "UDP destination port is not the GENEVE port"),
    ("geneve_truncated", "geneve", "UDP payload shorter than the GENEVE header"),
    ("geneve_bad_version", "geneve", "GENEVE version is not 0 (RFC 8926)"),
    ("geneve_oam", "geneve", "GENEVE control (O bit) packet, not data"),
    ("geneve_options_truncated", "geneve", "GENEVE option length runs past the UDP payload"),
    ("geneve_option_malformed", "geneve", "a GENEVE option runs past the header's option length"),
    ("geneve_unknown_critical", "geneve", "unknown option with the critical bit set (RFC 8926 3.5)"),
    ("geneve_bad_protocol", "geneve", "GENEVE protocol type is neither IPv4 nor IPv6"),
    ("gwlb_option_bad_length", "gwlb", "GWLB option (class 0x0108) with the wrong data length"),
    ("gwlb_option_duplicate", "gwlb", "GWLB option (class 0x0108) present twice"),
    ("gwlb_options_missing", "gwlb", "endpoint id, attachment id or flow cookie missing: not from GWLB"),
    ("inner_empty", "inner", "GENEVE carries no inner packet"),
    ("inner_version_mismatch", "inner", "inner IP version disagrees with the GENEVE protocol type"),
    ("inner_ip_truncated", "inner", "inner packet shorter than its IP header"),
    ("inner_ip_bad_header", "inner", "inner IP header length or total length field invalid"),
    ("inner_ip_bad_length", "inner", "inner IP total length runs past the GENEVE payload"),
    ("inner_ip_bad_checksum", "inner", "inner IPv4 header checksum wrong"),
    ("ipv6_too_many_ext_headers", "inner", "more IPv6 extension headers than egressd walks (8)"),
    ("ipv6_ext_header_truncated", "inner", "an IPv6 extension header runs past the packet"),
    ("ipv6_hop_by_hop_not_first", "inner", "IPv6 hop-by-hop options header not first (RFC 8200 4.1)"),
    ("tcp_truncated", "transport", "packet shorter than a TCP header"),
    ("tcp_bad_header", "transport", "TCP data offset below 5 words or past the packet"),
    ("tcp_bad_options", "transport", "a TCP option runs past the TCP header"),
    ("udp_inner_truncated", "transport", "packet shorter than a UDP header"),
    ("udp_inner_bad_length", "transport", "inner UDP length field disagrees with the IP payload"),
    ("icmp_truncated", "transport", "ICMP/ICMPv6 message shorter than its header"),
    ("icmp_bad_quote", "transport", "ICMP error quoting no parseable IP header"),
    ("frag_tiny", "fragment", "first fragment too short to hold the transport header (RFC 1858)"),
    ("frag_bad_offset", "fragment", "fragment runs past 65,535 bytes or misaligned non-final fragment"),
    ("frag_policy_drop", "fragment", "fragments dropped by the fragment default action"),
    ("frag_too_many", "fragment", "datagram sent in more fragments than the limit"),
    ("frag_inconsistent", "fragment", "fragments disagree on the datagram's end"),
    ("frag_header_too_long", "fragment", "IPv6 unfragmentable part longer than egressd keeps"),
    ("frag_table_full", "fragment", "no room to reassemble another datagram (fail closed)"),
    ("ipv6_two_fragment_headers", "inner", "IPv6 packet with more than one fragment header"),
    ("nacl_deny", "policy", "denied by a network ACL entry or its implicit deny"),
    ("egress_only", "policy", "IPv6 connection opened from outside home_net (egress-only gateway)"),
    ("security_group", "policy", "no security group rule allows the connection"),
    ("dns_firewall_block", "policy", "DNS query blocked by a DNS Firewall rule"),
    ("stateless_drop", "policy", "dropped by a stateless rule"),
    ("stateless_default_drop", "policy", "dropped by the stateless default action"),
    ("stateful_drop", "policy", "dropped by a stateful rule"),
    ("stateful_reject", "policy", "rejected by a stateful rule"),
    ("stateful_default_drop", "policy", "dropped by the stateful default action (drop_strict, drop_established)"),
    ("ech_offered", "policy", "ClientHello offers Encrypted Client Hello and the policy drops it"),
    ("sni_not_resolved", "policy", "SNI never resolved to the destination address (SNI spoofing, domain fronting)"),
)

Reason = IntEnum("Reason", [(name.upper(), code) for code, (name, _, _) in enumerate(TABLE)])
N_REASONS: int = len(TABLE)
NAMES: tuple[str, ...] = tuple(name for name, _, _ in TABLE)
STAGES: tuple[str, ...] = tuple(stage for _, stage, _ in TABLE)


class Verdict(IntEnum):
    """What happens to a packet. PENDING is never forwarded: stages fail closed."""

    PENDING = 0
    PASS = 1
    DROP = 2
