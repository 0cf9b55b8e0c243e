"""Caller-side wire formats, one module per API; see ``base.Dialect``."""
