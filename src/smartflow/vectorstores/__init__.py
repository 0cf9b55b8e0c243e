"""OpenAI-compatible vector stores and the RAG endpoints.

* ``service.VectorStoreService``: stores, files, search (no HTTP).
* ``routes.register_vector_store_routes``: the ``/v1/vector_stores`` and
  ``/v1/rag`` routes on a ``Router``.
* ``store``: the Redis key schema and persistence; ``search``: index search
  and RAG context; ``chunking``, ``filters``, ``multipart``: pure helpers.

Nothing is imported here, so importing one helper does not load the rest.
"""
