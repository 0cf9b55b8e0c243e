"""Routing: where a call goes and what happens when that deployment fails.

``deployments`` (groups of ``[[models]]``), ``strategies`` (the balancer),
``planner`` (one call's failover, retries and fallback chain), ``health``
(cooldowns, latency, least-connections counts in Redis),
``provider_budgets`` (daily caps per provider), ``records`` and
``route_store`` (chains and groups made through the admin API), ``runtime``
(a worker's copy of all of it). See docs/routing.md.
"""
