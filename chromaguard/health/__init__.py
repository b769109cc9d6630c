"""Readiness and status: what the service depends on, checked now."""
