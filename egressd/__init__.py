"""egressd: egress inspection engine for AWS Gateway Load Balancer targets."""
import hashlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("egressd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def _numba_cache_dir() -> str:
    """A numba cache folder named by a hash of every kernel source file.

    numba checks a cached kernel only against its own file, not against the kernels
    it calls in other modules, so after an upgrade (or an edit) a kernel could run
    with stale copies of another module's code.  One folder per set of sources makes
    any change start from a fresh cache.
    """
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for folder in ("engine", "geneve", "rules"):
        # installed: egressd/engine; source tree (editable install): engine/ beside egressd/
        where = here / folder if (here / folder).is_dir() else here.parent / folder
        for src in sorted(where.glob("*.py")):
            h.update(src.name.encode())
            h.update(src.read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(base / "egressd" / f"numba-{h.hexdigest()[:16]}")


if "numba" not in sys.modules:  # numba reads NUMBA_CACHE_DIR when it is first imported
    os.environ.setdefault("NUMBA_CACHE_DIR", _numba_cache_dir())
