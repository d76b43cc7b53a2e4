"""Provider clients: OpenAI-compatible, Anthropic Messages, and the in-process simulator."""
