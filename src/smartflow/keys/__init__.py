"""Virtual keys, teams, users, their budgets and rate limits, and the key vault.

Records live in Redis (``keys.store``); a worker caches them briefly
(``keys.key_cache``); every proxied call of a virtual key is admitted by one
Lua script call that checks the record's revision and reserves its budget
and rate limits (``keys.admission``).
"""
