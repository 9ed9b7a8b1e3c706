"""The fuzz and differential tests again, with numba's bounds checking on.

The kernels check every read against the captured length by hand; if one check is
missing, a read past the frame silently returns a neighbour's bytes.  With
NUMBA_BOUNDSCHECK=1 such a read raises IndexError instead.  A fresh NUMBA_CACHE_DIR
makes every kernel compile again with the checks (the normal cache holds versions
compiled without them), in a child interpreter, because the flag is read at import.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

MODULES = ["tests/test_decap_differential.py", "tests/test_fuzz_readers.py", "tests/test_flows.py",
           "tests/test_parse.py", "tests/test_frag.py", "tests/test_tls.py", "tests/test_http.py",
           "tests/test_dns.py", "tests/test_l7.py", "tests/test_fqdn.py", "tests/test_policy_fuzz.py",
           "tests/test_actions.py", "tests/test_serve_sockio.py"]
# Fewer hypothesis examples in the child: compiling every kernel again is most of its time.
CHILD_SCALE = "0.25"


def child_env(cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(cache_dir),
            "EGRESSD_FUZZ_SCALE": CHILD_SCALE}


def test_child_kernels_are_bounds_checked(tmp_path: Path) -> None:
    """Without this, the run below could pass without checking a single read."""
    probe = ("import numpy as np\n"
             "from egressd.engine.wire import u16\n"
             "try:\n"
             "    u16(np.zeros(1, np.uint8), 0)\n"
             "except IndexError:\n"
             "    print('bounds checked')\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=child_env(tmp_path / "numba"),
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "bounds checked", out.stdout + out.stderr


def test_fuzz_modules_pass_with_bounds_checks(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", *MODULES, "-q", "-p", "no:cacheprovider"],
                         cwd=REPO, env=child_env(tmp_path / "numba"), capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-20000:]}\n{out.stderr[-5000:]}"
