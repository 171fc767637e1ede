"""The ``voicegrid`` command line: every process role behind one entry point.

``voicegrid worker``, ``voicegrid gateway``, ``voicegrid simulate``, ``voicegrid demo`` and
``voicegrid bench`` (:mod:`voicegrid.cli`). This package sits on top of the layers: it imports
``worker``, ``ingress``, ``providers`` and ``redisio``; nothing imports it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("voicegrid")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
