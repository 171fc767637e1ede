"""The runtime internals the benchmark borrows, imported in this one place.

``open_redis`` (connections packed the way the worker and ingress pack them) and ``redact_url``
are moving out of ``worker/`` into a package of their own; when they do, only these imports
change.
"""

from __future__ import annotations

from worker.jobs import open_redis
from worker.settings import redact_url

__all__ = ["open_redis", "redact_url"]
