"""The Redis I/O layer every voicegrid process builds on (ingress, gateway, worker).

- :mod:`redisio.connection`: opening Redis (:func:`~redisio.connection.open_redis`), pump
  connections, Redis health, the errors that mean "unreachable";
- :mod:`redisio.resp`: command packing in C (hiredis) for the asyncio connections;
- :mod:`redisio.pumps`: the multiplexed stream reader and the coalescing pipelined writers;
- :mod:`redisio.lease`: the session lease and fenced writes (Lua);
- :mod:`redisio.jobs`: enqueueing the session job;
- :mod:`redisio.settings`: the configuration every process role shares;
- :mod:`redisio.metrics`: every Prometheus metric; :mod:`redisio.http`: ``/metrics``,
  ``/healthz``, ``/readyz``.

It depends on :mod:`protocol` only; ``ingress`` and ``worker`` build on it and never import each
other. The Redis contract it implements is ``docs/streams.md``.
"""
