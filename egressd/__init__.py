"""egressd: egress inspection engine for AWS Gateway Load Balancer targets."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("egressd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
