"""In-process :class:`~agents.runtime.state.StateStore` for the embedded mode.

A plain-Python mirror of the Redis Lua scripts (``redis_state.py``); both pass the same suite.
One lock guards everything, so threads with their own event loops may share an instance.

One module per aggregate, each with its cell and its primitives as a mixin: ``breakers``,
``limits`` (rate limits and concurrency leases), ``budgets``. ``store`` puts them together:
:class:`MemoryState` owns the clock, the one lock and every table, and holds the composite
calls that touch several aggregates under one acquisition of that lock.
"""

from __future__ import annotations

from agents.runtime.memory.store import MemoryState, spread

__all__ = ["MemoryState", "spread"]
