"""Stage 6: act on the verdicts: the packets egressd creates (being written)."""
from __future__ import annotations

from egressd.engine.batch import PacketBatch
from egressd.rules.compile import CompiledPolicy


class Actions:
    """Builds the packets that answer rejected flows and blocked DNS queries."""

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy

    def run(self, b: PacketBatch) -> PacketBatch | None:
        """The packets created for batch `b` (a batch of ready-to-return frames), or None."""
        return None

    def counters(self) -> dict[str, int]:
        return {}
