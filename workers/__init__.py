"""Process entry points the supervisor runs (one module per kind of process)."""
