"""The front doors of an execution: the lean ASGI shell, REST execute, the OpenAI-compatible
endpoint and the executions websocket."""
