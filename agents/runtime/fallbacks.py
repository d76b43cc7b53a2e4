"""User-facing messages for degraded executions (the reference deployment's ``ErrorHandler``).

Keys are the fallback kinds an agent may override in config (``fallback_messages``).
"""

from __future__ import annotations

from typing import Final

DEFAULT_FALLBACK_MESSAGES: Final[dict[str, str]] = {
    "rate_limit": "I'm experiencing high demand. Please try again in a moment.",
    "timeout": "This is taking longer than expected. Please try again shortly.",
    "llm_error": "I encountered an issue while answering. Please try again.",
    "tool_error": "I couldn't complete that action. Please try again.",
    "budget": "This assistant has reached its spending limit for today. Please try again later.",
    "unavailable": "This assistant is temporarily unavailable. Please try again in a few minutes.",
}

FALLBACK_KINDS: Final[frozenset[str]] = frozenset(DEFAULT_FALLBACK_MESSAGES)
