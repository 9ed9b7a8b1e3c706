#!/usr/bin/env python3
"""Capture real clients talking to real servers and wrap the captures as GWLB traffic.

No one in this project wrote the TLS, HTTP or DNS bytes in these captures: they come
from curl, ``openssl s_client``, Python's ``ssl`` module, headless Chromium, dig and
glibc's resolver, talking to ``openssl s_server``, Python's ``http.server`` and a tiny
DNS responder. The script:

1. creates two network namespaces, ``egressd-client`` and ``egressd-server``, joined by
   one veth pair (10.99.0.1 <-> 10.99.0.2, fd00:99::1 <-> fd00:99::2), with an MTU of
   1280 and every offload off (so the capture holds the packets as they were on the
   wire, with software checksums); the server advertises an MSS of 200 over IPv4, so
   every IPv4 ClientHello is split across several segments, while over IPv6 (MSS 1220)
   only Chromium's ~1.9 KB post-quantum ClientHello is split;
2. starts the servers in the server namespace, then for each client runs tcpdump on the
   client's veth, runs the client's commands one after the other, and stops tcpdump;
3. wraps every captured IP packet (ARP and neighbour discovery left out) in Ethernet /
   IPv4 / UDP 6081 / GENEVE with the three GWLB options, exactly as make_samples.py
   does, one flow cookie and outer source port per flow, capture timestamps kept;
4. checks with tshark that each capture carries exactly the expected names, and writes
   one pcap per client to ``clients/`` plus ``clients/manifest.json`` (per file: client,
   its version, the server, the commands, and the names tshark extracts, in order).

Nothing leaves the machine: the namespaces hold only the veth pair and loopback, have
no default route, the client namespace's resolv.conf names the DNS responder, and
every client is pointed at 10.99.0.2 / fd00:99::2 by a flag (curl --resolve,
Chromium --host-resolver-rules, dig @server). All host names are stand-ins under
.example and .test.

Outputs vary from run to run, and that is expected for real clients: TLS randoms,
keys, session ids, ports, TCP sequence numbers, timestamps, the server's certificate,
and sometimes how many connections Chromium opens. The set of names per file does not
vary (the script fails if it does); the exact lists are in manifest.json.

Needs root, iproute2, tcpdump, ethtool, openssl, curl, dnsutils (dig), chromium and
tshark, and from PyPI dnslib and scapy (``pip install -e '.[test]' dnslib``); the
script checks and prints the apt-get or pip command for what is missing, and installs
nothing. It removes its namespaces on exit and can be re-run.

Usage: sudo python pcaps/capture_clients.py [--only curl-tls dns ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_samples import ENDPOINT_A, Record, det_int, gwlb_frame, write_pcap  # noqa: E402

OUT = HERE / "clients"
CAPTURES = ("curl-tls", "openssl-s_client", "python-ssl", "chromium", "curl-http", "dns")
MANIFEST = "manifest.json"

NS_CLIENT, NS_SERVER = "egressd-client", "egressd-server"
VETH_CLIENT, VETH_SERVER = "egd-client", "egd-server"
CLIENT4, SERVER4 = "10.99.0.1", "10.99.0.2"
CLIENT6, SERVER6 = "fd00:99::1", "fd00:99::2"
PREFIXES = (ipaddress.ip_network("10.99.0.0/24"), ipaddress.ip_network("fd00:99::/64"))
LINK_MTU = 1280  # the IPv6 minimum, so both families share one link
SERVER_ADVMSS4 = 200  # smaller than any ClientHello, so every IPv4 one is split
HTTPS_PORT, HTTP_PORT, HTTP_ALT_PORT, DNS_PORT = 443, 80, 8080, 53
CLIENT_TIMEOUT_S = 90  # Chromium's cold start is the slow one
SETTLE_S = 0.5  # after a client exits, its last FIN/ACKs are still in flight

# Executable -> Debian package that provides it.
TOOLS = {
    "ip": "iproute2", "ss": "iproute2", "tcpdump": "tcpdump", "ethtool": "ethtool",
    "openssl": "openssl", "curl": "curl", "dig": "dnsutils", "getent": "libc-bin",
    "chromium": "chromium", "tshark": "tshark",
}
# Python packages the script needs beyond the project's test extras (scapy).
PY_MODULES = ("dnslib",)

# The DNS responder's zone: name -> [(type, data)]; a CNAME is followed within the zone.
# Answers are documentation addresses: only names and answers matter, nobody connects.
ZONE: dict[str, list[tuple[str, str]]] = {
    "updates.example.com": [("A", "192.0.2.10"), ("AAAA", "2001:db8::10")],
    "www.example.org": [("CNAME", "cdn.example.net")],
    "cdn.example.net": [("A", "192.0.2.20"), ("AAAA", "2001:db8::20")],
    "tcp.example.com": [("A", "192.0.2.30")],
    "v6.example.org": [("A", "192.0.2.40"), ("AAAA", "2001:db8::40")],
    "glibc.example.test": [("A", "192.0.2.50"), ("AAAA", "2001:db8::50")],
}

# tshark field -> whether it is read from DNS responses (1), queries (0) or any packet.
NAME_FIELDS = {
    "tls.handshake.extensions_server_name": None,
    "http.host": None,
    "dns.qry.name": "0",
    "dns.a": "1",
    "dns.aaaa": "1",
    "dns.cname": "1",
}
# Which packets carry a name: ClientHellos, HTTP requests, DNS.
NAME_FILTER = "tls.handshake.type == 1 or http.request or dns"


@dataclass(frozen=True)
class Client:
    """One output file: the commands run in the client namespace while tcpdump runs,
    and the names (per tshark field) the capture must contain, as a set."""

    file: str
    client: str
    version: str
    server: str
    commands: tuple[tuple[str, ...], ...]
    expected: dict[str, frozenset[str]]
    may_fail: frozenset[int] = frozenset()  # commands whose non-zero exit is the point


def names(**fields: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Expected names, keyed by tshark field (dots written as underscores)."""
    return {field: frozenset(fields.get(field.replace(".", "_"), ())) for field in NAME_FIELDS}


def run(cmd: list[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def first_line(cmd: list[str]) -> str:
    """A tool's version line (some print it on stderr)."""
    res = run(cmd, check=False)
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    return lines[0].strip() if lines else "unknown"


def python_version() -> str:
    return f"Python {platform.python_version()} ssl ({ssl.OPENSSL_VERSION})"


def clients(tmp: Path, only: set[str]) -> list[Client]:
    """Every capture this script makes, filtered by file stem."""
    py = sys.executable
    me = str(Path(__file__).resolve())
    curl = ("curl", "-q", "-sS", "-o", "/dev/null", "--max-time", "20")
    dig = ("dig", "+tries=1", "+time=3")
    openssl_version = first_line(["openssl", "version"])
    s_server = f"openssl s_server -www ({openssl_version})"

    def chromium(name: str, address: str, profile: str) -> tuple[str, ...]:
        return (
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            # Chromium's own background requests (update checks, sign-in, optimization
            # hints) survive the flags above: leaving every other name unresolved keeps
            # them out of the capture without a single DNS query.
            f"--user-data-dir={tmp / profile}", f"--host-resolver-rules=MAP {name} {address}, MAP * ~NOTFOUND",
            "--ignore-certificate-errors", "--dump-dom", f"https://{name}/",
        )

    all_clients = [
        Client(
            "curl-tls.pcap", "curl", first_line(["curl", "--version"]), s_server,
            (
                (*curl, "-k", "--resolve", f"pkgs.example.com:443:{SERVER4}", "https://pkgs.example.com/"),
                (*curl, "-k", "--tlsv1.2", "--tls-max", "1.2", "--resolve", f"legacy.example.com:443:{SERVER4}",
                 "https://legacy.example.com/"),
                (*curl, "-k", "--resolve", f"v6.pkgs.example.com:443:[{SERVER6}]", "https://v6.pkgs.example.com/"),
            ),
            names(tls_handshake_extensions_server_name=("pkgs.example.com", "legacy.example.com",
                                                        "v6.pkgs.example.com")),
        ),
        Client(
            "openssl-s_client.pcap", "openssl s_client", openssl_version, s_server,
            (
                ("openssl", "s_client", "-connect", f"{SERVER4}:443", "-servername", "shop.example.test",
                 "-alpn", "http/1.1"),
                ("openssl", "s_client", "-connect", f"[{SERVER6}]:443", "-servername", "v6.shop.example.test"),
                ("openssl", "s_client", "-connect", f"{SERVER4}:443", "-noservername"),
            ),
            names(tls_handshake_extensions_server_name=("shop.example.test", "v6.shop.example.test")),
        ),
        Client(
            "python-ssl.pcap", "Python ssl", python_version(), s_server,
            (
                (py, me, "_tls-client", SERVER4, "py.example.test"),
                (py, me, "_tls-client", SERVER6, "v6.py.example.test"),
                (py, me, "_tls-client", SERVER4, ""),  # no SNI at all
            ),
            names(tls_handshake_extensions_server_name=("py.example.test", "v6.py.example.test")),
        ),
        Client(
            "chromium.pcap", "Chromium headless", first_line(["chromium", "--version"]), s_server,
            (
                chromium("chromium.example.test", SERVER4, "profile4"),
                chromium("v6.chromium.example.test", f"[{SERVER6}]", "profile6"),
            ),
            names(tls_handshake_extensions_server_name=("chromium.example.test", "v6.chromium.example.test")),
        ),
        Client(
            "curl-http.pcap", "curl", first_line(["curl", "--version"]),
            f"Python {platform.python_version()} http.server",
            (
                (*curl, "-H", "Host: downloads.example.org", f"http://{SERVER4}/"),
                (*curl, "--resolve", f"files.example.org:8080:{SERVER4}", "http://files.example.org:8080/"),
                (*curl, "-g", "-H", "Host: v6.downloads.example.org", f"http://[{SERVER6}]/"),
                # Through an explicit proxy: an absolute-URI GET, then a CONNECT that
                # http.server refuses (501), which makes curl exit non-zero.
                (*curl, "-x", f"http://{SERVER4}:8080", "http://proxied.example.org/index.html"),
                (*curl, "-p", "-x", f"http://{SERVER4}:8080", "https://tunnel.example.org/"),
            ),
            names(http_host=("downloads.example.org", "files.example.org:8080", "v6.downloads.example.org",
                             "proxied.example.org", "tunnel.example.org:443")),
            may_fail=frozenset({4}),
        ),
        Client(
            "dns.pcap", "dig and glibc's resolver (getent)",
            f"{first_line(['dig', '-v'])}; {first_line(['getconf', 'GNU_LIBC_VERSION'])}",
            f"a small DNS responder in this script (dnslib {importlib.metadata.version('dnslib')})",
            (
                (*dig, f"@{SERVER4}", "updates.example.com", "A"),
                (*dig, f"@{SERVER4}", "updates.example.com", "AAAA"),
                (*dig, f"@{SERVER4}", "www.example.org", "A"),  # CNAME, then the A
                (*dig, f"@{SERVER6}", "v6.example.org", "AAAA"),
                (*dig, "+tcp", f"@{SERVER4}", "tcp.example.com", "A"),
                (*dig, "+tcp", f"@{SERVER6}", "www.example.org", "AAAA"),
                # The stub resolver sends A and AAAA together, to the nameserver in the
                # namespace's resolv.conf.
                ("getent", "ahosts", "glibc.example.test"),
            ),
            names(
                dns_qry_name=("updates.example.com", "www.example.org", "v6.example.org", "tcp.example.com",
                              "glibc.example.test"),
                dns_a=("192.0.2.10", "192.0.2.20", "192.0.2.30", "192.0.2.50"),
                dns_aaaa=("2001:db8::10", "2001:db8::40", "2001:db8::20", "2001:db8::50"),
                dns_cname=("cdn.example.net",),
            ),
        ),
    ]
    assert [Path(c.file).stem for c in all_clients] == list(CAPTURES)
    return [c for c in all_clients if not only or Path(c.file).stem in only]


# --- Namespaces and servers ----------------------------------------------------------


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def missing_modules() -> list[str]:
    return [name for name in PY_MODULES if importlib.util.find_spec(name) is None]


def remove_namespaces() -> None:
    for ns in (NS_CLIENT, NS_SERVER):
        run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def create_namespaces() -> None:
    for ns in (NS_CLIENT, NS_SERVER):
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "link", "add", VETH_CLIENT, "netns", NS_CLIENT, "type", "veth",
         "peer", "name", VETH_SERVER, "netns", NS_SERVER])
    for ns, dev, v4, v6 in ((NS_CLIENT, VETH_CLIENT, CLIENT4, CLIENT6), (NS_SERVER, VETH_SERVER, SERVER4, SERVER6)):
        run(in_ns(ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off"))
        run(["ip", "-n", ns, "link", "set", dev, "mtu", str(LINK_MTU), "up"])
        run(["ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev])
        run(["ip", "-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad"])
    run(["ip", "-n", NS_SERVER, "route", "replace", "10.99.0.0/24", "dev", VETH_SERVER, "proto", "kernel",
         "scope", "link", "src", SERVER4, "advmss", str(SERVER_ADVMSS4)])
    # `ip netns exec` bind-mounts this over /etc/resolv.conf: glibc asks our responder.
    conf = Path("/etc/netns") / NS_CLIENT
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "resolv.conf").write_text(f"nameserver {SERVER4}\noptions attempts:1 timeout:3\n")


def listening(ns: str) -> set[tuple[str, int]]:
    """(tcp|udp, port) of every listening socket in a namespace."""
    out = run(in_ns(ns, "ss", "-Hltun")).stdout
    return {(line.split()[0], int(line.split()[4].rsplit(":", 1)[1])) for line in out.splitlines() if line.strip()}


@contextlib.contextmanager
def servers(tmp: Path) -> Iterator[None]:
    """TLS, HTTP and DNS servers in the server namespace, stopped on exit."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=server.example.test",
         "-addext", "subjectAltName=DNS:*.example.test,DNS:*.example.com,DNS:*.example.org"])
    docroot = tmp / "www"
    docroot.mkdir()
    (docroot / "index.html").write_text("<html><body>egressd capture</body></html>\n")
    commands = [
        # Without -4/-6, s_server listens on both families.
        ["openssl", "s_server", "-accept", str(HTTPS_PORT), "-cert", str(cert), "-key", str(key), "-www"],
        [sys.executable, "-u", "-m", "http.server", str(HTTP_PORT), "--bind", "::", "--directory", str(docroot)],
        [sys.executable, "-u", "-m", "http.server", str(HTTP_ALT_PORT), "--bind", "::", "--directory", str(docroot)],
        [sys.executable, "-u", str(Path(__file__).resolve()), "_dns-server"],
    ]
    wanted = {("tcp", HTTPS_PORT), ("tcp", HTTP_PORT), ("tcp", HTTP_ALT_PORT), ("tcp", DNS_PORT), ("udp", DNS_PORT)}
    procs: list[subprocess.Popen] = []
    try:
        for index, cmd in enumerate(commands):
            with open(tmp / f"server{index}.log", "wb") as log:
                procs.append(subprocess.Popen(in_ns(NS_SERVER, *cmd), stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 20
        while not wanted <= listening(NS_SERVER):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"servers did not start; logs in {tmp}")
            time.sleep(0.2)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def tcpdump(path: Path) -> Iterator[None]:
    """Capture everything on the client's veth into ``path`` while the block runs."""
    log_path = path.with_suffix(".log")
    with open(log_path, "wb") as log:
        # -Z root: Debian's tcpdump otherwise drops to a user that cannot write to tmp.
        proc = subprocess.Popen(
            in_ns(NS_CLIENT, "tcpdump", "-i", VETH_CLIENT, "-n", "-s", "0", "-U", "--immediate-mode",
                  "-Z", "root", "-w", str(path), "ip or ip6"),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while b"listening on" not in log_path.read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"tcpdump did not start: {log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        yield
        time.sleep(SETTLE_S)
    finally:
        proc.send_signal(signal.SIGINT)  # lets tcpdump flush and close the file
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_client(cmd: tuple[str, ...], may_fail: bool, home: Path) -> None:
    # A session of its own, so that a hung Chromium can be ended with all its children.
    proc = subprocess.Popen(in_ns(NS_CLIENT, *cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env={**os.environ, "HOME": str(home)})
    try:
        out, err = proc.communicate(timeout=CLIENT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"client timed out after {CLIENT_TIMEOUT_S} s: {' '.join(cmd)}") from None
    finally:
        # Also on Ctrl-C: a process left inside a namespace outlives its deletion.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.returncode != 0 and not may_fail:
        tail = (err or out).decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"client exited {proc.returncode}: {' '.join(cmd)}\n  " + "\n  ".join(tail))


# --- Wrapping and checking -----------------------------------------------------------


def inner_packet(frame: bytes) -> bytes | None:
    """The IP packet in an Ethernet frame, cut to its own length, or None for
    anything GWLB would not carry (other EtherTypes, link-local and multicast
    traffic, neighbour discovery)."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if ethertype == 0x0800 and len(ip) >= 20:
        packet, src, dst = ip[: struct.unpack_from("!H", ip, 2)[0]], ip[12:16], ip[16:20]
    elif ethertype == 0x86DD and len(ip) >= 40:
        packet, src, dst = ip[: 40 + struct.unpack_from("!H", ip, 4)[0]], ip[8:24], ip[24:40]
        if ip[6] == 58 and len(ip) > 40 and 133 <= ip[40] <= 137:
            return None
    else:
        return None
    ours = all(any(ipaddress.ip_address(a) in net for net in PREFIXES) for a in (src, dst))
    return packet if ours else None


def flow_key(packet: bytes) -> str:
    """Direction-independent flow identity: protocol and the two (address, port) ends."""
    if packet[0] >> 4 == 4:
        start, proto, src, dst = (packet[0] & 0x0F) * 4, packet[9], packet[12:16], packet[16:20]
    else:
        start, proto, src, dst = 40, packet[6], packet[8:24], packet[24:40]
    ports = struct.unpack_from("!HH", packet, start) if proto in (6, 17) else (0, 0)
    ends = sorted([(ipaddress.ip_address(src), ports[0]), (ipaddress.ip_address(dst), ports[1])])
    return f"{proto}/{ends[0][0]}.{ends[0][1]}/{ends[1][0]}.{ends[1][1]}"


def wrap_capture(raw: Path, out: Path) -> int:
    """Write ``raw``'s IP packets as GWLB frames to ``out``; return the packet count."""
    from scapy.utils import RawPcapReader

    records = []
    with RawPcapReader(str(raw)) as reader:
        unit = 1000 if reader.nano else 1
        for frame, meta in reader:
            packet = inner_packet(bytes(frame))
            if packet is None:
                continue
            # GWLB keeps one cookie and one outer source port per flow, both directions.
            label = f"clients/{out.name}/{flow_key(packet)}"
            frame_out = gwlb_frame(packet, ENDPOINT_A, det_int(label + "/cookie", 1, 2**32 - 1),
                                   det_int(label + "/port", 1024, 65535))
            records.append(Record(frame_out, meta.sec * 1_000_000 + meta.usec // unit))
    write_pcap(out, records)
    return len(records)


def tshark_names(path: Path) -> dict[str, list[str]]:
    """The names tshark finds, per field of NAME_FIELDS, in packet order (DNS query
    names from queries only, answers from responses only)."""
    cmd = ["tshark", "-r", str(path), "-Y", NAME_FILTER, "-T", "fields", "-E", "occurrence=a",
           "-E", "aggregator=,", "-E", "separator=/t", "-e", "dns.flags.response"]
    cmd += [arg for field in NAME_FIELDS for arg in ("-e", field)]
    found: dict[str, list[str]] = {field: [] for field in NAME_FIELDS}
    for line in run(cmd, timeout=120).stdout.splitlines():
        response, *values = line.split("\t")
        for (field, side), value in zip(NAME_FIELDS.items(), values):
            if value and (side is None or side == response):
                found[field] += value.split(",")
    return found


def capture(client: Client, tmp: Path, out_dir: Path) -> dict:
    raw = tmp / client.file.replace(".pcap", "-raw.pcap")
    with tcpdump(raw):
        for index, cmd in enumerate(client.commands):
            run_client(cmd, index in client.may_fail, tmp)
    staged = tmp / client.file
    packets = wrap_capture(raw, staged)
    found = tshark_names(staged)
    wrong = {f: sorted(set(v) ^ client.expected[f]) for f, v in found.items() if set(v) != client.expected[f]}
    if wrong:
        raise RuntimeError(f"{client.file}: tshark's names differ from the expected ones: {wrong}")
    shutil.move(staged, out_dir / client.file)
    print(f"{client.file}: {packets} packets, {(out_dir / client.file).stat().st_size} bytes")
    return {
        "client": client.client,
        "version": client.version,
        "server": client.server,
        "commands": [shlex.join(cmd).replace(str(tmp), "<tmp>").replace(sys.executable, "python3")
                     .replace(str(Path(__file__).resolve()), "pcaps/capture_clients.py") for cmd in client.commands],
        "packets": packets,
        "names": found,
    }


# --- Helpers run inside the namespaces -----------------------------------------------


def tls_client(host: str, sni: str) -> None:
    """Python's ssl module: one HTTPS request, with SNI unless ``sni`` is empty."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((host, HTTPS_PORT), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=sni or None) as tls:
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {sni or host}\r\n\r\n".encode())
            while tls.recv(4096):
                pass


def dns_answer(query: bytes) -> bytes:
    """The responder's reply to one DNS message: authoritative, CNAMEs followed
    within ZONE, NXDOMAIN outside it; dnslib compresses names as real servers do."""
    from dnslib import QTYPE, RCODE, RR, DNSRecord

    request = DNSRecord.parse(query)
    reply = request.reply(ra=0, aa=1)
    qtype = QTYPE[request.q.qtype]
    name = str(request.q.qname).rstrip(".").lower()
    for _ in range(8):  # bounded CNAME chain
        records = ZONE.get(name, [])
        cname = [data for kind, data in records if kind == "CNAME"]
        if cname and qtype != "CNAME":
            reply.add_answer(*RR.fromZone(f"{name}. 300 IN CNAME {cname[0]}."))
            name = cname[0]
            continue
        for kind, data in records:
            if kind == qtype:
                reply.add_answer(*RR.fromZone(f"{name}. 300 IN {kind} {data}"))
        break
    if name not in ZONE:
        reply.header.rcode = RCODE.NXDOMAIN
    return reply.pack()


def dns_server() -> None:
    """Answer DNS over UDP and TCP on port 53, both address families, until killed."""

    def dual_stack(kind: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", DNS_PORT))
        return sock

    def serve_udp(sock: socket.socket) -> None:
        while True:
            query, peer = sock.recvfrom(4096)
            sock.sendto(dns_answer(query), peer)

    def serve_tcp(sock: socket.socket) -> None:
        sock.listen(16)
        while True:
            conn, _ = sock.accept()
            with conn, conn.makefile("rb") as stream:
                # RFC 1035 4.2.2: each message has a two-byte length prefix.
                while len(prefix := stream.read(2)) == 2:
                    reply = dns_answer(stream.read(struct.unpack("!H", prefix)[0]))
                    conn.sendall(struct.pack("!H", len(reply)) + reply)

    udp, tcp = dual_stack(socket.SOCK_DGRAM), dual_stack(socket.SOCK_STREAM)
    threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
    serve_tcp(tcp)


# --- Main ----------------------------------------------------------------------------


def update_manifest(out_dir: Path, entries: dict[str, dict]) -> None:
    """Replace this run's files in the manifest, keeping the others."""
    path = out_dir / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.update(entries)
    path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_tls-client"]:
        tls_client(*argv[1:3])
        return 0
    if argv[:1] == ["_dns-server"]:
        dns_server()
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=[], choices=CAPTURES, metavar="NAME",
                        help=f"capture only these, out of: {', '.join(CAPTURES)}")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("capture_clients.py: needs root (network namespaces, tcpdump)", file=sys.stderr)
        return 2
    missing = missing_tools()
    if missing:
        packages = sorted({TOOLS[tool] for tool in missing})
        print(f"capture_clients.py: missing {', '.join(missing)}; install with:\n"
              f"  apt-get install -y {' '.join(packages)}", file=sys.stderr)
        return 2
    if modules := missing_modules():
        print(f"capture_clients.py: missing Python packages; install with:\n  pip install {' '.join(modules)}",
              file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="egressd-capture-") as tmp_name:
        tmp = Path(tmp_name)
        remove_namespaces()  # left over by an interrupted run
        try:
            create_namespaces()
            with servers(tmp):
                for client in clients(tmp, set(args.only)):
                    entries[client.file] = capture(client, tmp, args.out)
        finally:
            remove_namespaces()
            update_manifest(args.out, entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
