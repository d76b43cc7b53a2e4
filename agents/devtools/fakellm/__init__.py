"""fakellm: a fault-injecting fake LLM upstream (OpenAI and Anthropic wire formats).

Plain aiohttp, no Django: ``python -m agents.devtools.fakellm --port 8090`` or
``python manage.py fakellm --port 8090``. See docs/FAKELLM.md.
"""

from __future__ import annotations

from agents.devtools.fakellm.faults import FaultConfig, FaultConfigError, parse_override
from agents.devtools.fakellm.server import FakeLLM, FakeLLMThread, create_app, run

__all__ = [
    "FakeLLM",
    "FakeLLMThread",
    "FaultConfig",
    "FaultConfigError",
    "create_app",
    "parse_override",
    "run",
]
