"""EVE JSON logs in AWS Network Firewall's format (being written)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from egressd.engine.batch import PacketBatch

EVE_TYPES = frozenset({"alert", "flow", "tls", "http", "dns"})


class EveWriter:
    def __init__(self, path: str | Path, types: frozenset[str], pipe) -> None:
        self.path = Path(path)

    def batch(self, b: PacketBatch) -> None:
        """Events of one decided batch (alerts, tls/http/dns)."""

    def flows(self, records: np.ndarray) -> None:
        """Flow events of ended flows (engine.flows RECORD_DTYPE)."""

    def commit(self) -> None:
        """Flush and put the file in place."""

    def abort(self) -> None:
        """Remove the partial file."""
