"""Deployments and model groups: where a public model name may be sent.

Several ``[[models]]`` entries with one ``name`` are one group; so is a group
made through the admin API (``/api/routing/groups``), which replaces a config
group of the same name. Every deployment has an id that is the same on every
worker and node (cooldowns, in-flight counts and latencies are kept in Redis
under it): the entry's ``id`` when given, else one derived from what the
deployment is (provider, upstream model, api_base, api_version), made unique
by its position only when two entries are otherwise identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from smartflow.config import ModelConfig
from smartflow.providers.base import Target

MAX_DEPLOYMENT_ID_CHARS = 64


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    target: Target
    weight: float = 1.0
    priority: int = 0
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def provider(self) -> str:
        return self.target.provider


@dataclass(frozen=True, slots=True)
class Group:
    """The deployments of one public model name, and how to pick among them."""

    name: str
    deployments: tuple[Deployment, ...]
    strategy: str

    @property
    def is_single(self) -> bool:
        return len(self.deployments) == 1


def derived_id(config: ModelConfig) -> str:
    upstream = config.model or config.name
    identity = f"{config.name}\0{config.provider}\0{upstream}\0{config.api_base}\0" \
        f"{config.api_version}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    readable = f"{config.provider}-{upstream}"[:40]
    return f"{readable}-{digest}"


def deployment_ids(configs: Iterable[ModelConfig]) -> list[str]:
    """One id per config entry, in order (explicit ids win; derived ones are unique)."""
    configs = list(configs)
    ids: list[str] = []
    taken = {config.id for config in configs if config.id}
    for config in configs:
        if config.id:
            ids.append(config.id)
            continue
        base = derived_id(config)
        candidate, n = base, 2
        while candidate in taken:
            candidate = f"{base}-{n}"
            n += 1
        taken.add(candidate)
        ids.append(candidate)
    return ids


def config_groups(entries: tuple[tuple[ModelConfig, Target], ...], default_strategy: str,
                  strategy_by_model: Mapping[str, str]) -> dict[str, Group]:
    """The groups of ``[[models]]`` (``Catalog.configured_entries()``), by public name."""
    ids = deployment_ids(config for config, _ in entries)
    members: dict[str, list[Deployment]] = {}
    for (config, target), deployment_id in zip(entries, ids, strict=True):
        members.setdefault(config.name, []).append(Deployment(
            deployment_id, target, config.weight, config.priority, frozenset(config.tags)))
    return {name: Group(name, tuple(found), strategy_by_model.get(name, default_strategy))
            for name, found in members.items()}
