"""Logs, metrics and traces: the instruments, the server spans and their attributes, OTLP encoding."""
