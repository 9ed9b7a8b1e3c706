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
