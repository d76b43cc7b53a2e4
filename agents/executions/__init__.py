"""Executions beyond the runtime: the queue, the durable record (journal and drainer), sessions,
idempotency, process liveness and live events."""
