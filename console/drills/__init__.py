"""Drills: the reference deployment's three incidents (an API outage, a cost spike, a memory
leak) replayed against a running deployment, with what its safeguards did measured.

A drill talks to a running ``serve`` over HTTP, as a client would (:mod:`.client`), with an
admin API key. It never touches a real agent: it starts fakellm upstreams of its own on free
loopback ports, creates providers and models for them (config as code's ``config_apply``:
the API has no provider endpoint), an agent of its own through the API (copied from
``--agent`` if given), drives traffic through the real execute path, injects the fault on its
own upstream, observes through the API (breakers, executions, incidents, budgets,
notifications) and removes everything it created at the end (:mod:`.setup`).

One module per drill (:mod:`.outage`, :mod:`.cost_spike`, :mod:`.memory_leak`);
:mod:`.services` stores each run as a :class:`console.models.DrillRun`, and
``manage.py drill`` and the ``/drills/`` page both go through it.
"""
