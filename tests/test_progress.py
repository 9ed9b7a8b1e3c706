"""The progress bar: shown on a terminal, never when output is piped or disabled."""
from __future__ import annotations

import os
import pty
import subprocess
import sys

from conftest import SAMPLE, egressd

BAR = "\u2501".encode()  # rich's bar segment


def _run_on_terminal(*args: str) -> tuple[int, bytes]:
    """Run the CLI with stdout/stderr on a pseudo-terminal; return (exit code, bytes)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "egressd", *args], stdin=follower,
                            stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return proc.wait(timeout=300), out


def test_bar_on_a_terminal(tmp_path):
    code, out = _run_on_terminal("replay", str(SAMPLE), "--out", str(tmp_path / "o.pcap"))
    assert code == 0
    assert BAR in out and b"replay" in out
    assert b"forwarded 105" in out


def test_no_bar_when_disabled(tmp_path):
    code, out = _run_on_terminal("replay", str(SAMPLE), "--out", str(tmp_path / "o.pcap"),
                                 "--no-progress")
    assert code == 0
    assert BAR not in out
    assert b"forwarded 105" in out


def test_no_bar_when_piped(tmp_path):
    res = egressd("replay", SAMPLE, "--out", tmp_path / "o.pcap")
    assert res.returncode == 0
    assert "\u2501" not in res.stderr and "\x1b[" not in res.stderr
    assert "forwarded 105" in res.stderr


def test_first_run_notice_only_on_a_terminal_with_a_cold_cache(tmp_path, monkeypatch):
    import io

    from egressd import cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    for stream, cached, expect in ((Terminal(), False, True), (io.StringIO(), False, False),
                                   (Terminal(), True, False)):
        if cached:
            (tmp_path / "k.nbi").write_bytes(b"")
        monkeypatch.setattr(sys, "stderr", stream)
        cli._first_run_notice()
        assert ("compiling the packet kernels" in stream.getvalue()) is expect
