"""engine.quic: the ClientHello of QUIC v1 / v2 flows, from the client's Initial packets.

The RFC 9001 / RFC 9369 Appendix A vectors pin the key schedule and the packet
protection.  A packet builder written here from the RFCs (cryptography's HKDF, not the
engine's) reproduces those vectors byte for byte, then builds the Initials the other
tests need: CRYPTO split, reordered, overlapping, contradicting, frames an Initial may
and may not carry, coalesced packets, DCID changes, Retry, and every bound.  Real
traffic: the shared corpus's QUIC captures against tshark, and aioquic's client
talking to aioquic's server in memory (no socket).  Corrupted, truncated and random
datagrams must never raise.
"""
from __future__ import annotations

import datetime
import ssl
import struct
from collections.abc import Callable

import dpkt
import numpy as np
import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted
from aioquic.quic.packet import QuicProtocolVersion, pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.engine import tls
from egressd.engine.quic import (MALFORMED, MAX_CRYPTO, NEED_MORE, NOT_QUIC, OK, VERSION_1,
                                 VERSION_2, QuicInitials, client_initial_keys)
from helpers_pcap import scapy_records, tshark_fields

# --- RFC 9001 Appendix A (v1) and RFC 9369 Appendix A (v2) -----------------------------
RFC_DCID = bytes.fromhex("8394c8f03e515708")
# A.2: the client's CRYPTO frame; the payload is this plus PADDING to 1162 bytes.
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c000004130113020100"
    "00c000000010000e00000b6578616d706c652e636f6dff01000100000a000800"
    "06001d00170018001000070005"
    "04616c706e0005000501000000000033"
    "00260024001d00209370b2c9caa47fbabaf4559fedba753de171fa71f50f1ce1"
    "5d43e994ec74d748002b0003020304000d0010000e0403050306030203080408"
    "050806002d00020101001c00024001003900320408ffffffffffffffff050480"
    "00ffff07048000ffff0801100104800075300901100f088394c8f03e51570806"
    "048000ffff")
RFC_PAYLOAD = RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))
RFC_CLIENT_HELLO = RFC_CRYPTO_FRAME[4:]
RFC_PN = 2
RFC_V1_PACKET = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934")
RFC_V2_PACKET = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc")
# A.1: initial_secret, client_initial_secret, key, iv, hp
RFC_KEYS = {
    VERSION_1: ("7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44",
                "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea",
                "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
                "9f50449e04a0e810283a1e9933adedd2"),
    VERSION_2: ("2062e8b3cd8d52092614b8071d0aa1fb7c2e3ac193f78b280e72d8f5751f6aba",
                "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b",
                "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f",
                "45b95e15235d6f45a6b19cbcb0294ba9"),
}
RFC_PACKETS = {VERSION_1: RFC_V1_PACKET, VERSION_2: RFC_V2_PACKET}

# --- a client Initial builder, from RFC 9001 5 and RFC 9369 3 ---------------------------
# version: (initial salt, label prefix, long-header type bits of Initial)
SPEC = {VERSION_1: ("38762cf7f55934b34d179ae6a4c80cadccbb7f0a", b"quic ", 0),
        VERSION_2: ("0dede3def700a6db819381be6e269dcbf9bd2ed9", b"quicv2 ", 1)}
DCID = bytes.fromhex("0102030405060708")


def expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def key_schedule(version: int, dcid: bytes) -> tuple[bytes, ...]:
    """(initial_secret, client_initial_secret, key, iv, hp)"""
    salt, prefix, _ = SPEC[version]
    h = hmac.HMAC(bytes.fromhex(salt), hashes.SHA256())
    h.update(dcid)
    initial = h.finalize()
    client = expand_label(initial, b"client in", 32)
    return (initial, client, expand_label(client, prefix + b"key", 16),
            expand_label(client, prefix + b"iv", 12), expand_label(client, prefix + b"hp", 16))


def varint(v: int, size: int = 0) -> bytes:
    """RFC 9000 16 encoding of v, in the fewest bytes unless size says."""
    size = size or next(n for n in (1, 2, 4, 8) if v < 1 << (8 * n - 2))
    return (v | {1: 0, 2: 1, 4: 2, 8: 3}[size] << (8 * size - 2)).to_bytes(size, "big")


def protect(payload: bytes, *, version: int = VERSION_1, dcid: bytes = DCID, pn: int = 0,
            pn_len: int = 4, scid: bytes = b"", token: bytes = b"", key_dcid: bytes | None = None,
            first_bits: int = 0, ptype: int | None = None) -> bytes:
    """One protected long-header packet (an Initial unless ptype says otherwise)."""
    _, _, key, iv, hp = key_schedule(version, key_dcid or dcid)
    ptype = SPEC[version][2] if ptype is None else ptype
    first = 0xC0 | ptype << 4 | first_bits | (pn_len - 1)
    tok = varint(len(token)) + token if ptype == SPEC[version][2] else b""
    header = (bytes([first]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid
              + bytes([len(scid)]) + scid + tok + varint(pn_len + len(payload) + 16, 2)
              + (pn & ((1 << 8 * pn_len) - 1)).to_bytes(pn_len, "big"))
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, header)
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sealed[4 - pn_len:20 - pn_len])
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    pn_off = len(header) - pn_len
    for k in range(pn_len):
        out[pn_off + k] ^= mask[1 + k]
    return bytes(out)


def initial(*frames: bytes, size: int = 1200, **kw) -> bytes:
    """A client Initial padded (PADDING frames) to `size` bytes."""
    body = b"".join(frames)
    bare = protect(body, **kw)
    return protect(body + bytes(max(0, size - len(bare))), **kw)


def crypto(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def hello(sni: bytes = b"example.com", pad: int = 0) -> bytes:
    """A minimal TLS 1.3 ClientHello handshake message; `pad` bytes of padding extension."""
    sn = struct.pack("!HBH", len(sni) + 3, 0, len(sni)) + sni
    exts = struct.pack("!HH", 0, len(sn)) + sn + struct.pack("!HHBH", 43, 3, 2, 0x0304)
    if pad:
        exts += struct.pack("!HH", 21, pad) + bytes(pad)
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def split(ch: bytes, n: int, **kw) -> list[bytes]:
    """ch as n Initials (packet numbers 0..n-1), in order."""
    step = -(-len(ch) // n)
    return [initial(crypto(k * step, ch[k * step:(k + 1) * step]), pn=k, **kw) for k in range(n)]


def names(ch: bytes) -> tuple[str | None, list[str]]:
    """(server name, ALPN protocols) as engine.tls reads the ClientHello."""
    name = np.zeros(tls.SNI_MAX, np.uint8)
    alpn = np.zeros(tls.ALPN_MAX, np.uint8)
    st_, _, nl, al, _, flags = tls.client_hello(np.frombuffer(ch, np.uint8), 0, len(ch), False,
                                                np.zeros(tls.MAX_CLIENT_HELLO, np.uint8), name, 0,
                                                alpn, 0)
    assert st_ == tls.OK
    protos, raw, i = [], bytes(alpn[:al]), 0
    while i < len(raw):
        protos.append(raw[i + 1:i + 1 + raw[i]].decode())
        i += 1 + raw[i]
    return (None if flags & tls.F_NO_SNI else bytes(name[:nl]).decode()), protos


def feed_all(q: QuicInitials, datagrams: list[bytes], flow: int = 1) -> list[int]:
    return [q.feed(flow, d)[0] for d in datagrams]


# --- RFC vectors --------------------------------------------------------------------------
@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_key_schedule_matches_rfc(version):
    want = tuple(bytes.fromhex(h) for h in RFC_KEYS[version])
    assert key_schedule(version, RFC_DCID) == want
    assert client_initial_keys(version, RFC_DCID) == want[2:]


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_rfc_client_initial(version):
    # the builder reproduces the RFC's protected packet from its header and payload...
    assert protect(RFC_PAYLOAD, version=version, dcid=RFC_DCID, pn=RFC_PN) == RFC_PACKETS[version]
    # ...and the engine reads the RFC's packet back to the ClientHello it carries
    status, ch = QuicInitials().feed(7, RFC_PACKETS[version])
    assert (status, ch) == (OK, RFC_CLIENT_HELLO)
    assert names(ch) == ("example.com", ["alpn"])


# --- the shared corpus against tshark -----------------------------------------------------
CAPTURES = ["quic-ietf", "quic-v2", "quic-frag", "quic-frag-unordered", "quic-initial-not-first",
            "quic-alerts"]


def client_datagrams(path) -> list[tuple[int, bytes]]:
    """(frame number, UDP payload) of every datagram to port 443, in capture order."""
    linktype, records = scapy_records(path)
    out = []
    for number, r in enumerate(records, 1):
        if linktype == 1:
            ip = dpkt.ethernet.Ethernet(r.frame).data
        elif linktype == 0:
            ip = dpkt.loopback.Loopback(r.frame).data
        else:
            ip = (dpkt.ip.IP if r.frame[0] >> 4 == 4 else dpkt.ip6.IP6)(r.frame)
        if isinstance(ip.data, dpkt.udp.UDP) and ip.data.dport == 443:
            out.append((number, bytes(ip.data.data)))
    return out


@pytest.mark.parametrize("capture", CAPTURES)
def test_corpus_against_tshark(capture, corpus, tshark):
    path = corpus / "suricata-verify" / capture / "input.pcap"
    hellos = [row for row in tshark_fields(path, "frame.number", "quic.version",
                                           "tls.handshake.type", "tls.handshake.extensions_server_name",
                                           "tls.handshake.length", "tls.handshake.extensions_alpn_str")
              if row[1] and row[2] == "1"]
    q = QuicInitials()
    statuses, got = [], None
    for number, d in client_datagrams(path):
        status, ch = q.feed(1, d)
        statuses.append(status)
        if status == OK:
            got = number, ch
        if status != NEED_MORE:
            break
    if not hellos:      # quic-alerts is Google QUIC (Q046): not IETF QUIC
        assert statuses == [NOT_QUIC]
        return
    (frame, _, _, sni, length, alpn), = hellos
    assert statuses[-1] == OK and set(statuses[:-1]) <= {NEED_MORE}
    number, ch = got
    assert number == int(frame)                 # complete in the datagram tshark completes it
    assert len(ch) == 4 + int(length)
    assert names(ch)[0] == (sni or None)
    assert names(ch)[1][0] == alpn
    assert q.counters()["flows"] == 0


def test_corpus_fragmented_hello_needs_both_datagrams(corpus):
    datagrams = [d for _, d in client_datagrams(corpus / "suricata-verify" / "quic-frag" / "input.pcap")]
    assert feed_all(QuicInitials(), datagrams[:2]) == [NEED_MORE, OK]
    assert feed_all(QuicInitials(), datagrams[1:2]) == [NEED_MORE]     # the tail alone


# --- aioquic, client and server in memory ------------------------------------------------
CLIENT, SERVER = ("10.0.0.1", 50000), ("10.0.0.2", 443)


@pytest.fixture(scope="module")
def server_cert():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert, key


def handshake(server_cert, *, sni: str, alpn: list[str], version: int,
              lost: Callable[[int], bool] = lambda k: False) -> tuple[list[bytes], list[bytes], bool]:
    """aioquic client and server: (client's first flight, every client datagram, handshake
    completed).  lost(k) drops the client's k-th datagram on its way to the server (the
    observer has already seen it)."""
    client = QuicConnection(configuration=QuicConfiguration(
        is_client=True, server_name=sni, alpn_protocols=alpn, verify_mode=ssl.CERT_NONE,
        original_version=version, supported_versions=[version]))
    cert, key = server_cert
    config = QuicConfiguration(is_client=False, alpn_protocols=alpn, supported_versions=[version],
                               certificate=cert, private_key=key)
    now = 1000.0
    client.connect(SERVER, now=now)
    first = [d for d, _ in client.datagrams_to_send(now)]
    odcid = pull_quic_header(Buffer(data=first[0]), host_cid_length=8).destination_cid
    server = QuicConnection(configuration=config, original_destination_connection_id=odcid)
    sent, done = [], False
    pending = first
    for _ in range(50):
        for d in pending:
            if not lost(len(sent)):
                server.receive_datagram(d, CLIENT, now)
            sent.append(d)
        for d, _ in server.datagrams_to_send(now):
            client.receive_datagram(d, SERVER, now)
        while (event := server.next_event()) is not None:
            done |= isinstance(event, HandshakeCompleted)
        pending = [d for d, _ in client.datagrams_to_send(now)]
        if not pending:
            if done or client.get_timer() is None:
                break
            now = client.get_timer()
            client.handle_timer(now)
            pending = [d for d, _ in client.datagrams_to_send(now)]
    return first, sent, done


@pytest.mark.parametrize("version", [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2])
@pytest.mark.parametrize("big", [False, True])
def test_aioquic_client(server_cert, version, big):
    # a long ALPN list spreads the ClientHello over several Initials, one per datagram
    alpn = ["h3", *(f"proto-{k:03d}-" + "x" * 100 for k in range(30))] if big else ["h3"]
    first, sent, done = handshake(server_cert, sni="www.example.org", alpn=alpn, version=version)
    assert done                                 # the datagrams make a real handshake
    assert len(first) == (4 if big else 1)
    want = [NEED_MORE] * (len(first) - 1) + [OK]
    assert feed_all(QuicInitials(), first) == want
    assert feed_all(QuicInitials(), first[::-1]) == want
    q = QuicInitials()
    ch = [q.feed(1, d) for d in first][-1][1]
    sni, protos = names(ch)
    assert sni == "www.example.org"
    assert protos == ["h3"]     # engine.tls keeps the entries that fit in ALPN_MAX


def test_aioquic_retransmission_after_dcid_change(server_cert):
    # The server misses the second Initial; its Initial (an ACK) makes the client switch
    # to the server's connection id, and the lost CRYPTO data comes again under it:
    # still protected with keys from the first Initial's DCID (RFC 9001 5.2).
    alpn = [f"proto-{k:03d}-" + "x" * 100 for k in range(30)]
    first, sent, done = handshake(server_cert, sni="lost.example.org", alpn=alpn,
                                  version=QuicProtocolVersion.VERSION_1, lost=lambda k: k == 1)
    assert done
    dcid = lambda d: d[6:6 + d[5]]
    later = [d for d in sent[len(first):] if dcid(d) != dcid(first[0])]
    assert later
    q = QuicInitials()
    assert feed_all(q, [first[0], *first[2:]]) == [NEED_MORE] * (len(first) - 1)
    statuses = feed_all(q, later)
    assert OK in statuses
    ok = statuses.index(OK)
    assert set(statuses[:ok]) <= {NEED_MORE}


# --- reassembly and frames ----------------------------------------------------------------
CH = hello(b"frames.example", pad=300)


def test_out_of_order_duplicates_and_overlaps():
    a, b, c = CH[:100], CH[100:200], CH[200:]
    parts = [initial(crypto(200, c), pn=0), initial(crypto(0, a), crypto(50, CH[50:150]), pn=1),
             initial(crypto(0, a), pn=2), initial(crypto(100, b), pn=3)]
    q = QuicInitials()
    assert feed_all(q, parts) == [NEED_MORE, NEED_MORE, NEED_MORE, OK]
    assert q.feed(2, initial(crypto(0, CH), crypto(0, CH[:10]), crypto(len(CH), b"")))[1] == CH


def test_contradicting_overlap_fails_the_flow():
    forged = CH[:20] + b"X" + CH[21:100]
    q = QuicInitials()
    assert q.feed(1, initial(crypto(0, CH[:100]))) == (NEED_MORE, b"")
    assert q.feed(1, initial(crypto(0, forged), pn=1)) == (MALFORMED, b"")
    assert q.feed(1, initial(crypto(100, CH[100:]), pn=2)) == (MALFORMED, b"")    # for good
    assert q.counters()["conflicts"] == 1
    q.forget(1)
    assert q.feed(1, initial(crypto(0, CH)))[0] == OK


ALLOWED = {
    "ping": b"\x01",
    "ack": b"\x02" + varint(10) + varint(5) + varint(2) + varint(3) + varint(1) + varint(1)
           + varint(0) + varint(0),
    "ack_ecn": b"\x03" + varint(900) + varint(1000) + varint(0) + varint(2) + varint(1)
               + varint(20000) + varint(3),
    "connection_close": b"\x1c" + varint(0x0a) + varint(0x06) + varint(5) + b"bye!!",
    "padding_between": bytes(17),
}


@pytest.mark.parametrize("frame", ALLOWED.values(), ids=ALLOWED.keys())
def test_frames_an_initial_may_carry(frame):
    assert QuicInitials().feed(1, initial(frame, crypto(0, CH), frame))[0] == OK


REFUSED = {
    "stream": b"\x08" + varint(0) + b"x",
    "new_token": b"\x07" + varint(1) + b"t",
    "app_close": b"\x1d" + varint(0) + varint(0),
    "handshake_done": b"\x1e",
    "crypto_non_minimal_type": b"\x40\x06" + varint(0) + varint(1) + b"\x01",
    "ack_ranges_past_end": b"\x02" + varint(1) + varint(0) + varint(60000) + varint(0),
    "ack_truncated": b"\x03" + varint(1) + varint(0) + varint(0) + varint(0) + varint(1),
    "crypto_past_end": b"\x06" + varint(0) + varint(5000),
    "close_reason_past_end": b"\x1c" + varint(0) + varint(0) + varint(9000),
}


@pytest.mark.parametrize("frame", REFUSED.values(), ids=REFUSED.keys())
def test_frames_an_initial_may_not_carry(frame):
    q = QuicInitials()
    # at the end, so that what follows cannot be PADDING read as part of the frame
    assert q.feed(1, initial(crypto(0, CH), frame, size=0) + bytes(1200))[0] == MALFORMED
    assert q.counters()["bad_frames"] == 1


def test_coalesced_packets():
    zero_rtt = protect(b"\x01" * 40, pn=0, ptype=1)
    handshake_pkt = protect(b"\x01" * 40, pn=0, ptype=2)
    ch = initial(crypto(0, CH), size=0)
    for d in (ch + zero_rtt + handshake_pkt, handshake_pkt + ch + zero_rtt,
              zero_rtt + ch + bytes(1200)):
        assert QuicInitials().feed(1, d + bytes(max(0, 1200 - len(d)))) == (OK, CH)
    # only Initials count: without one a new flow is not an Initial flow
    assert QuicInitials().feed(1, zero_rtt + handshake_pkt + bytes(1200))[0] == NOT_QUIC


def test_not_quic():
    ch = initial(crypto(0, CH))
    for d in (b"", b"\xc0", bytes(1200), b"\x40" + ch[1:],        # empty, short header
              ch[:1] + b"\x00\x00\x00\x00" + ch[5:],                  # version negotiation
              ch[:1] + b"\xff\x00\x00\x1d" + ch[5:],                  # draft-29
              ch[:1] + b"Q046" + ch[5:], ch[:1] + b"\x1a\x2a\x3a\x4a" + ch[5:]):  # gQUIC, grease
        assert QuicInitials().feed(1, d)[0] == NOT_QUIC
    # a v1 Initial's type bits mean Retry in v2, and v2's mean 0-RTT in v1
    assert QuicInitials().feed(1, initial(crypto(0, CH), version=VERSION_2, ptype=0))[0] == NOT_QUIC
    assert QuicInitials().feed(1, initial(crypto(0, CH), ptype=1))[0] == NOT_QUIC
    # a server's Initial: its CRYPTO stream starts with a ServerHello
    q = QuicInitials()
    assert q.feed(1, initial(crypto(0, b"\x02" + CH[1:])))[0] == NOT_QUIC
    assert q.feed(1, initial(crypto(0, CH), pn=1))[0] == NOT_QUIC          # for good


@pytest.mark.parametrize("pn_len,pns", [(1, [0, 1, 200, 300]), (2, [65530, 65540]),
                                        (3, [1, 1 << 23]), (4, [7, 3 << 30])])
def test_packet_numbers(pn_len, pns):
    # each packet number is encoded in pn_len bytes; the flow decodes it against the
    # largest seen (RFC 9000 A.3), or the AEAD nonce is wrong
    pieces = [CH[k * 60:(k + 1) * 60] for k in range(len(pns) - 1)]
    pieces.append(CH[60 * (len(pns) - 1):])
    q = QuicInitials()
    statuses = [q.feed(1, initial(crypto(60 * k, p), pn=pn, pn_len=pn_len))[0]
                for k, (p, pn) in enumerate(zip(pieces, pns))]
    assert statuses == [NEED_MORE] * (len(pns) - 1) + [OK]


def test_dcid_of_first_initial_keys_the_flow():
    other = bytes.fromhex("aabbccdd")
    q = QuicInitials()
    assert q.feed(1, initial(crypto(0, CH[:100]), pn=0)) == (NEED_MORE, b"")
    # the client took the server's connection id; keys stay those of the first DCID
    assert q.feed(1, initial(crypto(100, CH[100:]), dcid=other, key_dcid=DCID, pn=1)) == (OK, CH)


def test_retry_changes_the_keys():
    retry_dcid, server_cid = bytes.fromhex("5555666677778888"), bytes.fromhex("99")
    q = QuicInitials()
    assert q.feed(1, initial(crypto(0, CH[:100]), pn=0))[0] == NEED_MORE
    # after a Retry the client resends the same ClientHello under the Retry's connection
    # id, which now keys its Initials, also after it moves to the server's id
    assert q.feed(1, initial(crypto(0, CH[:200]), dcid=retry_dcid, pn=1))[0] == NEED_MORE
    assert q.feed(1, initial(crypto(200, CH[200:]), dcid=server_cid, key_dcid=retry_dcid,
                             pn=2)) == (OK, CH)


def test_reserved_bits_and_small_datagrams():
    assert QuicInitials().feed(1, initial(crypto(0, CH), first_bits=0x04))[0] == MALFORMED
    q = QuicInitials()
    assert q.feed(1, initial(crypto(0, CH), size=1199))[0] == MALFORMED
    assert q.counters()["short_datagrams"] == 1


# --- corruption ---------------------------------------------------------------------------
@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_every_single_byte_corruption(bit):
    # the header is integrity-protected (AEAD associated data), the packet number hidden
    # by header protection: no flip can produce a ClientHello
    for pos in range(len(RFC_V1_PACKET)):
        d = bytearray(RFC_V1_PACKET)
        d[pos] ^= bit
        status = QuicInitials().feed(1, bytes(d))[0]
        unprotected_form = pos in (1, 2, 3, 4) or (pos == 0 and bit == 0x80)   # version, header form
        assert status == (NOT_QUIC if unprotected_form else MALFORMED), pos


def test_truncated_and_extended():
    for cut in range(len(RFC_V1_PACKET)):
        status = QuicInitials().feed(1, RFC_V1_PACKET[:cut])[0]
        assert status == (NOT_QUIC if cut < 7 else MALFORMED), cut
    # bytes after the last packet are not a packet: ignored
    assert QuicInitials().feed(1, RFC_V1_PACKET + b"\xff" * 30)[0] == OK


def test_corruption_leaves_the_flow_usable():
    q = QuicInitials()
    bad = bytearray(RFC_V1_PACKET)
    bad[600] ^= 1
    assert q.feed(1, bytes(bad))[0] == MALFORMED
    assert q.feed(1, RFC_V1_PACKET) == (OK, RFC_CLIENT_HELLO)


VALID = split(CH, 3)


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, 2), edits=st.lists(st.tuples(st.integers(0, 1299), st.integers(0, 255)),
                                               max_size=6),
       cut=st.integers(0, 1300), junk=st.binary(max_size=64))
def test_mutated_datagrams_never_raise(which, edits, cut, junk):
    d = bytearray(VALID[which])
    for pos, value in edits:
        if pos < len(d):
            d[pos] = value
    q = QuicInitials(max_packets=4)
    for datagram in (VALID[0], bytes(d[:cut]) + junk, VALID[1], VALID[2]):
        status, ch = q.feed(1, datagram)
        assert status in (OK, NEED_MORE, NOT_QUIC, MALFORMED)
        if status == OK:
            assert ch == CH     # first data wins, and the frames read were authentic
            break


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=1400))
def test_random_datagrams_after_a_long_header(tail):
    for head in (b"\xc0\x00\x00\x00\x01", b"\xd0\x6b\x33\x43\xcf", b"\xe0\x00\x00\x00\x01"):
        status, ch = QuicInitials().feed(1, head + tail)
        assert status in (NEED_MORE, NOT_QUIC, MALFORMED) and ch == b""


# --- bounds -------------------------------------------------------------------------------
def test_max_flows_drops_the_oldest():
    q = QuicInitials(max_flows=3)
    halves = [split(hello(f"f{k}.example".encode(), pad=300), 2) for k in range(5)]
    assert [q.feed(k, h[0])[0] for k, h in enumerate(halves)] == [NEED_MORE] * 5
    assert q.counters()["flows"] == 3 and q.counters()["evicted"] == 2
    # the two oldest lost their first half: their second half alone cannot complete
    assert [q.feed(k, halves[k][1])[0] for k in (4, 3, 2, 1, 0)] == [OK] * 3 + [NEED_MORE] * 2


def test_max_crypto():
    q = QuicInitials()
    assert q.feed(1, initial(crypto(MAX_CRYPTO - 10, bytes(10))))[0] == NEED_MORE    # fits
    assert q.feed(2, initial(crypto(MAX_CRYPTO - 10, bytes(11))))[0] == MALFORMED    # one past
    assert q.feed(2, initial(crypto(0, CH), pn=1))[0] == MALFORMED                    # for good
    assert q.counters()["too_large"] == 1
    # a ClientHello announcing more than MAX_CRYPTO bytes can never complete
    assert q.feed(3, initial(crypto(0, b"\x01" + (MAX_CRYPTO - 3).to_bytes(3, "big"))))[0] == MALFORMED
    # one of exactly MAX_CRYPTO bytes can, over 15 Initials
    big = hello(b"big.example", pad=MAX_CRYPTO - len(hello(b"big.example", pad=0)) - 4)
    assert len(big) == MAX_CRYPTO
    q = QuicInitials(max_packets=15)
    assert feed_all(q, split(big, 15)) == [NEED_MORE] * 14 + [OK]


def test_max_packets():
    parts = split(CH, 4)
    assert feed_all(QuicInitials(max_packets=4), parts) == [NEED_MORE] * 3 + [OK]
    q = QuicInitials(max_packets=3)
    assert feed_all(q, parts + parts[:1]) == [NEED_MORE] * 3 + [MALFORMED] * 2
    assert q.counters()["over_budget"] == 1 and q.counters()["initials"] == 4
    # coalesced Initials count one by one
    both = b"".join(initial(crypto(k * 20, CH[k * 20:(k + 1) * 20]), pn=k, size=0) for k in range(3))
    assert QuicInitials(max_packets=2).feed(1, both + bytes(1200))[0] == MALFORMED


def test_state_is_released():
    q = QuicInitials()
    parts = split(CH, 2)
    q.feed(1, parts[0])
    q.feed(2, parts[0])
    assert q.counters()["flows"] == 2
    assert q.feed(1, parts[1])[0] == OK
    q.forget(2)
    assert q.counters()["flows"] == 0 and q.counters()["completed"] == 1
