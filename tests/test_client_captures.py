"""The committed real-client captures in pcaps/clients/ are what capture_clients.py says.

Each file must be GWLB GENEVE on every packet (walked with dpkt by the reference
decoder), carry real inner traffic with valid checksums (the script turns offloads
off), split ClientHellos where the script forces it, and contain exactly the names
its manifest lists, as tshark extracts them. The expected names are also written out
here, independently of the script, in order of first appearance (re-running the
script changes how often a name appears, never which names appear in which order).
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import dpkt
import pytest

from conftest import PCAPS
from helpers_pcap import dpkt_records, tshark_fields
from reference_decap import reference_decap

sys.path.insert(0, str(PCAPS))

from capture_clients import CAPTURES, NAME_FIELDS, PREFIXES, tshark_names  # noqa: E402
from make_samples import ENDPOINT_A  # noqa: E402

CLIENTS = PCAPS / "clients"
MANIFEST = json.loads((CLIENTS / "manifest.json").read_text())
FILES = [f"{stem}.pcap" for stem in CAPTURES]
SNI = "tls.handshake.extensions_server_name"
TLS_FILES = ["curl-tls.pcap", "openssl-s_client.pcap", "python-ssl.pcap", "chromium.pcap"]
GWLB_OPTIONS_LEN = 32  # endpoint id 12 + attachment id 12 + cookie 8
ECH, X25519MLKEM768 = "65037", "0x11ec"  # extension 0xfe0d; group as tshark prints it

# Per file: tshark field -> distinct names in order of first appearance.
EXPECTED: dict[str, dict[str, list[str]]] = {
    "curl-tls.pcap": {SNI: ["pkgs.example.com", "legacy.example.com", "v6.pkgs.example.com"]},
    "openssl-s_client.pcap": {SNI: ["shop.example.test", "v6.shop.example.test"]},
    "python-ssl.pcap": {SNI: ["py.example.test", "v6.py.example.test"]},
    "chromium.pcap": {SNI: ["chromium.example.test", "v6.chromium.example.test"]},
    "curl-http.pcap": {"http.host": ["downloads.example.org", "files.example.org:8080", "v6.downloads.example.org",
                                     "proxied.example.org", "tunnel.example.org:443"]},
    "dns.pcap": {
        "dns.qry.name": ["updates.example.com", "www.example.org", "v6.example.org", "tcp.example.com",
                         "glibc.example.test"],
        "dns.a": ["192.0.2.10", "192.0.2.20", "192.0.2.30", "192.0.2.50"],
        "dns.aaaa": ["2001:db8::10", "2001:db8::40", "2001:db8::20", "2001:db8::50"],
        "dns.cname": ["cdn.example.net"],
    },
}


def distinct(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def test_manifest_covers_every_capture_and_files_stay_small() -> None:
    assert sorted(MANIFEST) == sorted(FILES)
    assert sum((CLIENTS / f).stat().st_size for f in FILES) < 1_500_000
    for entry in MANIFEST.values():
        assert entry["version"] and entry["version"] != "unknown"
        assert entry["commands"]


@pytest.mark.parametrize("name", FILES)
def test_every_packet_is_gwlb_geneve_around_one_of_our_flows(name: str) -> None:
    records = dpkt_records(CLIENTS / name)
    assert len(records) == MANIFEST[name]["packets"] > 0
    cookie_of: dict[tuple, int] = {}
    port_of: dict[tuple, int] = {}
    for record in records:
        decoded = reference_decap(record.frame, 1, len(record.frame), record.wirelen)
        assert decoded.reason == "ok", decoded
        fields = decoded.fields
        assert (fields["gwlb_eni"], fields["gwlb_attach"]) == (ENDPOINT_A.endpoint_id, ENDPOINT_A.attachment_id)
        assert fields["inner"] - fields["geneve"] - 8 == GWLB_OPTIONS_LEN  # the three GWLB options, nothing else
        inner_bytes = record.frame[fields["inner"]:]
        inner = dpkt.ip.IP(inner_bytes) if fields["gproto"] == 0x0800 else dpkt.ip6.IP6(inner_bytes)
        assert len(inner) == len(inner_bytes)  # no trailing link padding left inside
        ends = [ipaddress.ip_address(inner.src), ipaddress.ip_address(inner.dst)]
        assert all(any(a in net for net in PREFIXES) for a in ends)
        l4 = inner.data
        key = (type(l4).__name__, *sorted(zip(ends, (getattr(l4, "sport", 0), getattr(l4, "dport", 0)))))
        # GWLB keeps one cookie and one outer source port per flow, in both directions.
        assert cookie_of.setdefault(key, fields["gwlb_cookie"]) == fields["gwlb_cookie"]
        assert port_of.setdefault(key, fields["outer_sport"]) == fields["outer_sport"]
    assert len(set(cookie_of.values())) == len(cookie_of)


@pytest.mark.parametrize("name", FILES)
def test_tshark_finds_exactly_the_manifest_names(name: str) -> None:
    found = tshark_names(CLIENTS / name)
    assert found == MANIFEST[name]["names"]
    expected = EXPECTED[name]
    assert {field: distinct(found[field]) for field in NAME_FIELDS} == {
        field: expected.get(field, []) for field in NAME_FIELDS
    }


@pytest.mark.parametrize("name", FILES)
def test_inner_checksums_are_valid(tshark: str, name: str) -> None:
    """Offloads were off: every inner checksum was computed, and is right."""
    checked = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]
    rows = subprocess.run(
        [tshark, "-r", str(CLIENTS / name), *checked, "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
         "-e", "ip.checksum.status", "-e", "tcp.checksum.status", "-e", "udp.checksum.status"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.splitlines()
    statuses = [s for row in rows for column in row.split("\t") for s in column.split(",") if s]
    # 1 = good (0 = bad, 2 = unverified); outer IPv4 and UDP, inner IP and transport.
    assert set(statuses) == {"1"}
    assert len(statuses) >= 3 * len(rows)


@pytest.mark.parametrize("name", TLS_FILES)
def test_client_hellos_are_split_where_the_script_forces_it(name: str) -> None:
    """IPv4 servers advertise MSS 200, so every IPv4 ClientHello spans several
    segments; over IPv6 (MTU 1280) only Chromium's does."""
    rows = [row for row in tshark_fields(CLIENTS / name, "tls.handshake.type", "ipv6.src", "tcp.segment.count")
            if row[0] == "1"]
    assert len(rows) >= (2 if name == "chromium.pcap" else 3)
    for _, v6_source, segments in rows:
        if not v6_source or name == "chromium.pcap":
            assert int(segments or 1) >= 2, rows


def test_chromium_sends_post_quantum_key_shares_and_ech_grease(tshark: str) -> None:
    rows = subprocess.run(
        [tshark, "-r", str(CLIENTS / "chromium.pcap"), "-Y", "tls.handshake.type == 1", "-T", "fields",
         "-E", "occurrence=a", "-E", "aggregator=,", "-e", "tls.handshake.extensions_supported_group",
         "-e", "tls.handshake.extension.type", "-e", "tls.handshake.length"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.splitlines()
    assert rows
    for row in rows:
        groups, extensions, length = row.split("\t")
        assert X25519MLKEM768 in groups.split(",")
        assert ECH in extensions.split(",")
        assert int(length) > 1280  # larger than the link MTU: never in one segment
