"""One worker's policy engine: the policies (kept fresh from Redis), the
guardrail engine over the shared models, and the learning loop.

Without Redis the built-in guardrails and the built-in ``default`` policy
still judge every call; policies, attachments, documents and feedback need
the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from smartflow.policy.engine import DetectorServices, GuardrailEngine
from smartflow.policy.resolver import CallScope, PolicySnapshot, Resolution

if TYPE_CHECKING:
    import numpy as np

    from smartflow.config import PolicySettings, Settings
    from smartflow.embeddings.runtime import EmbeddingRuntime
    from smartflow.policy.decision_log import DecisionLog
    from smartflow.policy.learning import LearningRuntime
    from smartflow.policy.store import PolicyStore
    from smartflow.policy.watcher import PolicyWatcher
    from smartflow.store.fast_client import StoreClient

logger = logging.getLogger(__name__)


class PolicyRuntime:
    def __init__(self, settings: PolicySettings, engine: GuardrailEngine, *,
                 pattern_engine: GuardrailEngine | None = None,
                 watcher: PolicyWatcher | None = None,
                 learning: LearningRuntime | None = None) -> None:
        self.settings = settings
        self.engine = engine
        # The default policy's, unless it runs the model checks too.
        self.default_engine = (engine if settings.default_model_checks or pattern_engine is None
                               else pattern_engine)
        self.watcher = watcher
        self.learning = learning
        self._default = settings.default_policy or None
        self._builtins = PolicySnapshot.builtins()
        self._starting: asyncio.Task[None] | None = None

    @property
    def store(self) -> PolicyStore | None:
        return self.watcher.store if self.watcher is not None else None

    @property
    def decision_log(self) -> DecisionLog | None:
        return self.learning.decision_log if self.learning is not None else None

    def resolve(self, team: str | None, key_alias: str | None, model: str,
                tags: tuple[str, ...]) -> Resolution:
        snapshot = self.watcher.snapshot if self.watcher is not None else self._builtins
        return snapshot.resolve(CallScope(model=model, team=team, key_alias=key_alias,
                                          tags=tags), self._default)

    def start_soon(self) -> None:
        """``start`` in the background (with the worker's loop running): the
        built-ins judge calls until the stored policies are loaded."""
        self._starting = asyncio.get_running_loop().create_task(self.start())

    async def start(self) -> None:
        if self.watcher is not None:
            await self.watcher.start()
        if self.learning is not None:
            await self.learning.start()

    async def aclose(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        if self.learning is not None:
            await self.learning.aclose()
        if self.watcher is not None:
            await self.watcher.aclose()


def build_policy_runtime(settings: Settings, *, store_client: StoreClient | None,
                         redis_url: str | None, embeddings: EmbeddingRuntime | None,
                         ner: object | None = None) -> PolicyRuntime:
    """The worker's runtime; call ``start()`` with the loop running."""
    policy = settings.policy
    model_checks = policy.model_checks and embeddings is not None

    def load_ner() -> Any:
        if ner is not None:
            return ner
        from smartflow.policy.ner import load_ner as load

        return load()

    embed = None
    embed_async = None
    if model_checks and embeddings is not None:
        runtime = embeddings

        def embed_now(texts: Sequence[str]) -> np.ndarray:
            return runtime.encoder_now().encode(texts)

        embed = embed_now
        embed_async = runtime.embed
    services = DetectorServices(model_checks=model_checks, embed=embed, embed_async=embed_async,
                                load_ner=load_ner)
    watcher = None
    learning = None
    if store_client is not None and redis_url:
        from smartflow.policy.store import PolicyStore
        from smartflow.policy.watcher import PolicyWatcher

        watcher = PolicyWatcher(PolicyStore(store_client), redis_url)
        if embeddings is not None:
            from smartflow.policy.learning import LearningRuntime

            learning = LearningRuntime(store_client, embeddings.embed, redis_url=redis_url,
                                       decisions_ttl_s=int(policy.remember_decisions_s),
                                       decisions_max=policy.remember_max_calls)
            services.learning = learning
    pattern_engine = GuardrailEngine(DetectorServices(model_checks=False))
    return PolicyRuntime(policy, GuardrailEngine(services), pattern_engine=pattern_engine,
                         watcher=watcher, learning=learning)
