"""Routing: fallback chains and model groups (records, their Redis store)."""
