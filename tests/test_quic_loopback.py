"""A real QUIC handshake on 127.0.0.1, captured, and its SNI read back by egressd and tshark.

aioquic's server and client talk over real UDP sockets through a small relay that
records every datagram with its direction and arrival time.  The recording becomes a
GWLB capture (client port -> 443, the way a QUIC flow looks on the wire), and the name
egressd attaches must be the client's server_name, on the frame tshark reads it from.
"""
from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, QuicEvent
from scapy.layers.inet import IP, UDP

from gwlb import wrap, write_pcap
from test_names import egressd_names, tshark_names
from test_quic import server_cert  # noqa: F401 (fixture: self-signed EC certificate)

SNI = "quic.loopback.test"
LOOPBACK = "127.0.0.1"
CLIENT_IP, SERVER_IP = "10.0.0.1", "10.0.0.2"
TIMEOUT = 10.0


class Relay(asyncio.DatagramProtocol):
    """Forwards one client's datagrams to the server and back, recording each one as
    (from_client, ns timestamp, client port, payload)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.records: list[tuple[bool, int, int, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        from_client = addr[:2] != self.server
        if from_client:
            self.client = addr[:2]
        if self.client is None:     # nothing from the server can come before the client
            return
        self.records.append((from_client, time.time_ns(), self.client[1], data))
        self.transport.sendto(data, self.server if from_client else self.client)


async def _handshake(cert, key) -> tuple[list[tuple[bool, int, int, bytes]], int]:
    """(every relayed datagram, handshakes the server saw complete).  Raises (or times
    out) unless the client connected and its ping was answered."""
    completed = 0

    class ServerSide(QuicConnectionProtocol):
        def quic_event_received(self, event: QuicEvent) -> None:
            nonlocal completed
            completed += isinstance(event, HandshakeCompleted)
            super().quic_event_received(event)

    loop = asyncio.get_running_loop()
    server = await serve(LOOPBACK, 0, create_protocol=ServerSide, configuration=QuicConfiguration(
        is_client=False, alpn_protocols=["h3"], certificate=cert, private_key=key))
    relay_transport, relay = await loop.create_datagram_endpoint(
        lambda: Relay(server._transport.get_extra_info("sockname")[:2]),
        local_addr=(LOOPBACK, 0))
    try:
        config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=SNI,
                                   verify_mode=ssl.CERT_NONE)
        port = relay_transport.get_extra_info("sockname")[1]
        async with connect(LOOPBACK, port, configuration=config) as client:
            await client.ping()     # answered only once both sides have 1-RTT keys
    finally:
        relay_transport.close()
        server.close()
    return relay.records, completed


def _capture(records: list[tuple[bool, int, int, bytes]], path: Path) -> Path:
    frames = []
    for from_client, _, cport, data in records:
        if from_client:
            inner = IP(src=CLIENT_IP, dst=SERVER_IP) / UDP(sport=cport, dport=443) / data
        else:
            inner = IP(src=SERVER_IP, dst=CLIENT_IP) / UDP(sport=443, dport=cport) / data
        frames.append(wrap(bytes(inner)))
    return write_pcap(path, frames, [t for _, t, _, _ in records])


def test_loopback_handshake_sni(server_cert, tmp_path):  # noqa: F811
    t0 = time.monotonic()
    records, completed = asyncio.run(asyncio.wait_for(_handshake(*server_cert), TIMEOUT))
    assert completed == 1                               # a real, complete handshake
    assert time.monotonic() - t0 < TIMEOUT
    directions = [from_client for from_client, *_ in records]
    assert directions[0] and not all(directions)        # both ways went through the relay
    # aioquic's ClientHello with one short ALPN fits in the first Initial: the first
    # client datagram completes it
    path = _capture(records, tmp_path / "loopback-quic.pcap")
    names, apps = egressd_names(path)
    assert names == {1: SNI}
    assert apps == {1: "quic"}
    assert tshark_names(path) == names
