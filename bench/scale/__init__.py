"""The production-shaped test (``make scale-test``; issue 14 part 6).

One deployment as Kubernetes runs it, on one machine: three ``serve`` processes behind a TCP
round-robin (:mod:`bench.scale.proxy`, the Service), two Celery workers on two queues, beat, the
journal drainer, a private Redis, a scratch PostgreSQL database, and two fakellm upstreams (the
agents' primary and fallback providers). ``manage.py loadgen`` drives the reference
deployment's mix at its peak rate (60 requests/s, synchronous, queued and streamed) while the
primary upstream goes down, one ``serve`` and one worker are SIGKILLed (and restarted, as a pod
would be), and the figures are read back from outside: the load generator's own record of every
answer, the database, Redis and ``/metrics``.

* :mod:`bench.scale.deployment`: the processes (built on :mod:`bench.chaos.stack`);
* :mod:`bench.scale.scenario`: the shapes (full and quick), the run, the figures;
* ``python -m bench.scale``: the command ``make scale-test`` runs.

The chaos harness's rules hold: nothing here imports Django or the application. Method and
figures: docs/BENCHMARKS.md, "Production-shaped scale test".
"""

from __future__ import annotations
