"""Shared paths and helpers for the test suite.

Tools the tests compare against (tshark) are installed by .ci/run; a missing tool
fails the test rather than skipping it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PCAPS = REPO / "pcaps"
CORPUS = REPO.parent / "shared" / "corpus"
SAMPLE = PCAPS / "sample-gwlb.pcap"
MALFORMED = PCAPS / "malformed-gwlb.pcap"


def egressd(*args: str, **kw) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (a fresh interpreter), capturing its output."""
    return subprocess.run([sys.executable, "-m", "egressd", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="session")
def tshark() -> str:
    path = shutil.which("tshark")
    assert path, "tshark is required (apt-get install tshark); .ci/run installs it"
    return path


@pytest.fixture(scope="session")
def corpus() -> Path:
    assert CORPUS.is_dir(), f"shared corpus not found at {CORPUS}"
    return CORPUS
