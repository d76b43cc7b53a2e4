"""Shared infrastructure below every app: domain errors, environment readers, Redis clients, the
audit trail and its rows, database guards and log redaction. It imports no app."""
