"""Fault scenarios against real processes (``make chaos``; issue 10, "Acceptance").

Each scenario starts its own deployment from scratch (a fresh database, a private
``redis-server`` on a port of 6391-6399 in distributed mode, ``manage.py fakellm`` as the
upstream, ``manage.py serve``, and in distributed mode ``manage.py drain_records`` and a Celery
worker with beat, as a deployment runs them), configures it with ``manage.py apply -f`` and
``manage.py create_api_key``, drives traffic at it, injects one fault (SIGKILL, SIGSTOP, an empty
Redis, PostgreSQL refusing connections, clients that disconnect or trickle, poisoned bodies), and
measures the outcome from outside only: HTTP answers, database rows, Redis keys, the budgets and
deployments API, fakellm's request counts. Nothing here imports Django or the application.

* :mod:`bench.chaos.stack`: the processes, databases and private Redis servers;
* :mod:`bench.chaos.load`: HTTP traffic, raw sockets that disconnect or trickle;
* :mod:`bench.chaos.observe`: what is read back (rows, ledger against budgets, leases);
* :mod:`bench.chaos.scenarios`: the scenarios, sized by parameters (``make chaos`` runs the full
  sizes, ``tests/chaos/`` the quick ones with smaller sizes);
* :mod:`bench.chaos.report`: figures, targets and the table.

Method and figures: docs/RELIABILITY.md.
"""

from __future__ import annotations
