"""Numbered schema migrations for the PostgreSQL audit sink.

``postgres_sink.apply_migrations`` runs, in version order, every file here
named ``NNNN_name.sql`` (executed as is) or ``NNNN_name.py`` (a module with
``async def apply(conn) -> None``, for a step that needs Python to decide),
each once per database, recording it in ``smartflow_schema_migrations``.

A migration is frozen once released: to change the schema, add the next
number; never edit an applied one (databases that ran it will not run it
again).
"""
