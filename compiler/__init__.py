"""edgec: a hardware-aware model compiler for edge devices, on Apache TVM."""

from importlib import metadata

try:
    __version__ = metadata.version("edgec")
except metadata.PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0+source"
