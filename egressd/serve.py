"""`egressd serve`: egressd as a GWLB target on a Linux host.

GENEVE in on UDP 6081, the replay pipeline over every batch, returns to the GWLB
address each packet came from (outer addresses swapped, UDP ports and GENEVE bytes as
received).  The supervisor process owns the health check and metrics servers and the
signals; `--workers` processes (spawned) do the packet work, each with its own
socket on the shared port (SO_REUSEPORT) and its own flow table.

Flow stickiness.  GWLB sends every packet of a flow (both directions) from the same
outer 5-tuple: its address, a UDP source port it derives from the flow, our address,
port 6081.  The kernel picks the SO_REUSEPORT socket by a hash of that 4-tuple, so a
flow always reaches the same worker and its state, as long as the set of workers does
not change; a worker that dies stops the service (exit 1) rather than let its flows
move to workers that never saw them.  State shared between flows (DNS answers the
policy learns for SNI checks) is per worker.

Signals.  SIGHUP: load and compile the policy files again; a file that fails is logged
(file, line, reason) and the running policy stays; a good one goes to every worker,
whose flows keep their state and are judged again on their next packet.  SIGTERM or
SIGINT: health turns 503, the workers serve on for `--drain-seconds` (GWLB sees the
target unhealthy), then finish their batch in flight and exit; exit 0.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import signal
import socket
import time

from egressd import telemetry as T
from egressd.cli import EXIT_INTERNAL, EXIT_OK, BadInput, _load_policy
from egressd.engine.frag import FragMode

log = logging.getLogger("egressd.serve")
MAX_BATCH = 4096
_TICK_S = 0.1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run as a GWLB target: GENEVE on UDP 6081, returns to GWLB",
                       description="Receive GWLB's GENEVE traffic on UDP 6081, decide every packet as "
                                   "`replay` does, and return the passed ones (and egressd's answers) "
                                   "to the GWLB address they came from.  Needs CAP_NET_RAW (raw socket "
                                   "for the returns).  SIGHUP reloads the policy, SIGTERM drains.")
    p.add_argument("--address", default="0.0.0.0", metavar="ADDR",
                   help="local IPv4 address for GENEVE, health and metrics (default all)")
    p.add_argument("--policy", action="append", default=[], metavar="FILE",
                   help="policy file (repeatable), as for replay; none means allow all")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes sharing UDP 6081 (SO_REUSEPORT; a flow stays on one)")
    p.add_argument("--health-port", type=int, default=8080, metavar="PORT",
                   help="TCP / HTTP health check port: GET /health is 200 when serving, 503 "
                        "while starting or draining (default 8080)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on this port (default: none)")
    p.add_argument("--batch", type=int, default=256, metavar="N",
                   help=f"datagrams per receive, 1..{MAX_BATCH} (default 256)")
    p.add_argument("--flow-capacity", type=int, default=1 << 20, metavar="N",
                   help="flow table slots per worker, a power of two (default 1048576)")
    p.add_argument("--fragments", choices=("reassemble", "pass", "drop"), default=None,
                   help="inner IP fragments, as for replay (default: the policy's, else "
                        "reassemble; fixed at start)")
    p.add_argument("--accept-non-gwlb", action="store_true",
                   help="accept GENEVE without GWLB's endpoint/attachment/cookie options")
    p.add_argument("--drain-seconds", type=float, default=0.0, metavar="S",
                   help="on SIGTERM, keep serving this long with health 503 before stopping "
                        "(about GWLB's health check interval times its unhealthy threshold)")
    p.add_argument("--setup-interface", metavar="IFACE",
                   help="first set IFACE's MTU (9001) and the socket buffer limits for GWLB")
    p.set_defaults(run=run)


def _check(args: argparse.Namespace):
    from egressd.engine.flows import FlowConfig
    from egressd.worker import WorkerConfig

    if args.workers < 1:
        raise BadInput(f"--workers {args.workers}: at least 1")
    if not 1 <= args.batch <= MAX_BATCH:
        raise BadInput(f"--batch {args.batch}: between 1 and {MAX_BATCH}")
    for flag, port in (("--health-port", args.health_port), ("--metrics-port", args.metrics_port)):
        if port is not None and not 1 <= port <= 65535:
            raise BadInput(f"{flag} {port}: not a TCP port")
    if args.drain_seconds < 0:
        raise BadInput(f"--drain-seconds {args.drain_seconds}: not negative")
    try:
        socket.inet_aton(args.address)
    except OSError:
        raise BadInput(f"--address {args.address}: not an IPv4 address") from None
    try:
        FlowConfig(capacity=args.flow_capacity)
    except ValueError as e:
        raise BadInput(f"--flow-capacity: {e}") from None
    policy = _load_policy(args.policy, "--policy")[1] if args.policy else None
    if args.fragments:
        frag = FragMode[args.fragments.upper()]
    else:
        frag = policy.frag_mode if policy else FragMode.REASSEMBLE
    return policy, WorkerConfig(args.address, args.batch, args.flow_capacity, frag,
                                not args.accept_non_gwlb)


def _probe_sockets(address: str) -> None:
    """Fail with the reason before any worker starts: UDP 6081 taken, no CAP_NET_RAW."""
    from egressd.engine.sockio import raw_socket, udp_socket

    try:
        udp_socket(address, reuseport=True).close()
    except OSError as e:
        raise BadInput(f"--address {address}: cannot bind UDP 6081: {e.strerror}") from None
    try:
        raw_socket().close()
    except PermissionError:
        raise BadInput("serve needs CAP_NET_RAW (raw socket for the returns to GWLB)") from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="egressd: %(message)s")
    policy, cfg = _check(args)
    if args.setup_interface:
        from egressd.hostsetup import setup_interface

        log.info("interface %s: %s", args.setup_interface, setup_interface(args.setup_interface))
    _probe_sockets(args.address)
    return Supervisor(args, cfg, policy).run()


class Supervisor:
    def __init__(self, args: argparse.Namespace, cfg, policy) -> None:
        self.args = args
        self.cfg = cfg
        self.shared = T.Shared(args.workers)
        self.reload = False
        self.stop = False
        self.procs: list = []
        self.conns: list = []
        self.servers: list = []
        self.first_policy = policy

    def _signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = True

    def _start_servers(self) -> None:
        a = self.args
        try:
            self.servers.append(T.serve_health(self.shared, a.address, a.health_port))
            if a.metrics_port is not None:
                from prometheus_client import start_http_server
                from prometheus_client.registry import CollectorRegistry

                registry = CollectorRegistry(auto_describe=False)
                registry.register(T.ServeCollector(self.shared))
                server, _thread = start_http_server(a.metrics_port, a.address, registry)
                self.servers.append(server)
        except OSError as e:
            raise BadInput(f"health / metrics port: {e.strerror}") from None

    def _start_workers(self) -> None:
        from egressd import worker

        ctx = mp.get_context("spawn")
        for i in range(self.args.workers):
            parent, child = ctx.Pipe()
            parent.send((1, self.first_policy))
            p = ctx.Process(target=worker.run, name=f"egressd-worker-{i}",
                            args=(i, self.cfg, self.shared.name, self.args.workers, child))
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        self.shared.control[T.C_GENERATION] = 1

    def _reload(self) -> None:
        self.reload = False
        if not self.args.policy:
            log.info("SIGHUP: no --policy files to reload (allowing all)")
            return
        try:
            policy = _load_policy(self.args.policy, "--policy")[1]
        except BadInput as e:
            self.shared.control[T.C_RELOAD_FAILURES] += 1
            log.error("policy reload refused, the running policy stays: %s", e)
            return
        generation = int(self.shared.control[T.C_GENERATION]) + 1
        for c in self.conns:
            c.send((generation, policy))
        self.shared.control[T.C_GENERATION] = generation
        log.info("policy reloaded: generation %d", generation)

    def _lost_worker(self) -> bool:
        dead = [p for p in self.procs if p.exitcode is not None]
        for p in dead:
            log.error("%s exited with code %s: stopping", p.name, p.exitcode)
        return bool(dead)

    def run(self) -> int:
        for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._signal)
        ready_logged = False
        failed = False
        try:
            self._start_servers()
            self._start_workers()
            while not self.stop:
                if self.reload:
                    self._reload()
                if self._lost_worker():
                    failed = True
                    break
                if not ready_logged and self.shared.healthy():
                    log.info("ready: %d worker(s), health on :%d", len(self.procs), self.args.health_port)
                    ready_logged = True
                time.sleep(_TICK_S)
            self._drain(failed)
        finally:
            for s in self.servers:
                s.shutdown()
                s.server_close()
            self._join()
            self.shared.close()
        codes = [p.exitcode for p in self.procs]
        return EXIT_INTERNAL if failed or any(codes) else EXIT_OK

    def _drain(self, failed: bool) -> None:
        ctl = self.shared.control
        ctl[T.C_DRAINING] = 1
        if not failed:
            log.info("draining: health 503, serving %.1f s more", self.args.drain_seconds)
            end = time.monotonic() + self.args.drain_seconds
            while time.monotonic() < end and not self._lost_worker():
                time.sleep(_TICK_S)
        ctl[T.C_STOP] = 1

    def _join(self) -> None:
        self.shared.control[T.C_STOP] = 1
        for p in self.procs:
            p.join(10)
            if p.exitcode is None:
                log.error("%s did not stop: killed", p.name)
                p.kill()
                p.join()
        log.info("stopped")
