"""The agents app's REST routes (one ninja Router per aggregate), mounted by ``console.api``:
agents, their breakers, deployments and executions (:mod:`agents.api.agents`), queued executions
(:mod:`agents.api.queued`) and API keys (:mod:`agents.api.keys`)."""

from __future__ import annotations

from agents.api import agents, keys, queued
from agents.api.agents import router

routers = (agents.router, queued.router, keys.router)

__all__ = ["router", "routers"]
