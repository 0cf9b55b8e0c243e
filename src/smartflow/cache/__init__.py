"""The response cache (MetaCache): exact and semantic tiers, replay, stats.

``metacache`` (L1 in process -> L3 exact in Redis -> L2 semantic), ``keys``
(what identifies an answer: exact key, semantic context, prompt), ``entries``
(the Redis store), ``l1`` (the worker's LRU), ``controls`` (per-request
headers), ``stage`` (the pipeline stage), ``replay*`` (a cached answer given
back in the caller's dialect, streamed or not), ``stats`` (hits, misses,
savings), ``runtime`` (a worker's MetaCache), ``verifier`` (whether a
semantic candidate may serve a prompt: numbers, negation, entities, order,
time, language, format) and ``volatility`` (adaptive TTL from the prompt's
wording and the drift of its answers).
"""
