"""A loaded PRM at serving time: engine + micro-batcher + prefix cache, shared by every API that scores steps.

`score()` is the request path of ARCHITECTURE "Cache": tokenize by the trajectory contract, read every prefix key
of every item in one round trip, send only items with a missing step to the engine (via the micro-batcher), write
the new steps back with a TTL. The cache fails open: any error or a slow reply counts as all-miss (a metric and a
log line), and after an error the cache is skipped for `backoff_s` so an outage adds no latency per request.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from dataclasses import dataclass

from repirl.scoring.base import StepScores
from repirl.scoring.cache import decode_value, encode_value, prefix_keys
from repirl.scoring.formats import format_facts
from server.batching import MicroBatcher
from server.errors import APIError, LimitExceeded
from server.metrics import Metrics
from server.settings import Limits

log = logging.getLogger("repirl.server")


class GuardedCache:
    """Fail-open wrapper: bounded time per call, errors counted and logged, a short back-off after an error."""

    def __init__(self, cache, metrics: Metrics, timeout_s: float, backoff_s: float):
        self.cache, self.metrics, self.timeout_s, self.backoff_s = cache, metrics, timeout_s, backoff_s
        self.kind = cache.kind
        self._skip_until = 0.0
        self.last_ok = True  # the last cache call succeeded: what /readyz reports (no round trip per probe)

    async def _call(self, op: str, coro, fallback):
        if time.monotonic() < self._skip_until:
            coro.close()
            return fallback
        try:
            out = await asyncio.wait_for(coro, self.timeout_s)
            self.last_ok = True
            return out
        except Exception as e:  # Redis down, slow, or answering garbage: the request goes on without the cache
            self.last_ok = False
            self.metrics.cache_errors.labels(op).inc()
            self._skip_until = time.monotonic() + self.backoff_s
            log.warning("prefix cache %s failed (%s: %s); failing open for %.1fs", op, type(e).__name__, e,
                        self.backoff_s)
            return fallback

    async def get_many(self, keys):
        return await self._call("get", self.cache.get_many(keys), [None] * len(keys))

    async def set_many(self, entries, ttl_s):
        await self._call("set", self.cache.set_many(entries, ttl_s), None)

    def healthy(self) -> bool:
        """From the last call, not a ping: /readyz stays cheap whatever the rate it is polled at."""
        return self.last_ok


# The API key's hash when `cache_scope: api-key` (set by the auth dependency for the request, read by `score`);
# None: the deployment-wide cache. Search threads get it passed explicitly (a context var does not follow them).
TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("repirl_tenant", default=None)


@dataclass
class ItemScore:
    scores: StepScores
    cached_steps: int


class PRMRuntime:
    def __init__(self, name: str, scorer, cache: GuardedCache, metrics: Metrics, limits: Limits, *,
                 ttl_s: int, salt: str | None):
        self.name, self.scorer, self.cache, self.metrics, self.limits = name, scorer, cache, metrics, limits
        self.ttl_s, self.salt = ttl_s, salt
        self.has_token_rewards = format_facts(scorer.config).has_token_rewards
        # the longest trajectory this PRM takes: the limit, or the model's own context when shorter (past it vLLM
        # failed the whole batch and transformers scored positions the model never saw)
        context = getattr(scorer, "context_tokens", None)
        self.max_tokens = min(limits.max_tokens, context or limits.max_tokens)
        self._max_what = "tokens" if self.max_tokens == limits.max_tokens else f"tokens (PRM {name!r}'s context)"
        # engines that take encoded trajectories skip a second tokenization in the engine thread
        self._encoded = hasattr(scorer, "score_encoded")
        self.batcher = MicroBatcher(name, scorer.score_encoded if self._encoded else scorer.score,
                                    max_batch_tokens=limits.max_batch_tokens, max_batch_items=limits.max_batch_items,
                                    max_wait_ms=limits.max_wait_ms, max_queue_items=limits.max_queue_items,
                                    metrics=metrics)

    @property
    def config(self):
        return self.scorer.config

    def cache_salt(self, tenant: str | None) -> str | None:
        """The deployment salt, plus the tenant's key hash when the cache is scoped per key (prefix_keys hashes it)."""
        return self.salt if tenant is None else f"{self.salt or ''}\0tenant\0{tenant}"

    async def score(self, items: list[tuple[str, list[str]]], params: list[str],
                    tenant: str | None = None, admitted: bool = False) -> list[ItemScore]:
        """`params[i]` names item i in errors (e.g. "items[3]"). `tenant` (default: the request's TENANT) scopes the
        cache entries read and written. `admitted`: a search's call, past its own admission (never a 429 here)."""
        tenant = tenant if tenant is not None else TENANT.get()
        salt = self.cache_salt(tenant)
        trajs = []
        for (question, steps), param in zip(items, params):
            # the engine's own prefix reuse (KV cache, sharing within a batch) stays inside the tenant too
            traj = dataclasses.replace(self.scorer.encoder.encode(question, steps), scope=tenant or "")
            if len(traj.ids) > self.max_tokens:
                raise LimitExceeded(param, len(traj.ids), self.max_tokens, self._max_what)
            trajs.append(traj)
        keys = [prefix_keys(self.scorer.revision, t, salt) for t in trajs]
        flat_keys = [k for ks in keys for k in ks]
        raw = await self.cache.get_many(flat_keys) if flat_keys else []
        results: list[ItemScore | None] = [None] * len(items)
        todo, pos = [], 0
        for i, (traj, ks) in enumerate(zip(trajs, keys)):
            got = [decode_value(raw[pos + k], end - start, self.has_token_rewards)
                   for k, (start, end) in enumerate(traj.step_spans)]
            pos += len(ks)
            hits = sum(g is not None for g in got)
            self.metrics.cache_hits.labels(self.name).inc(hits)
            self.metrics.cache_misses.labels(self.name).inc(len(got) - hits)
            if hits == len(got):
                scores = StepScores(step_rewards=[g[0] for g in got],
                                    token_rewards=[g[1] for g in got] if self.has_token_rewards else None,
                                    tokens_computed=0, tokens_total=len(traj.ids))
                results[i] = ItemScore(scores, cached_steps=hits)
                self.metrics.tokens_reused.labels(self.name).inc(len(traj.ids))
            else:
                todo.append((i, hits))
        if todo:
            work = [trajs[i] if self._encoded else items[i] for i, _ in todo]
            try:
                computed = await self.batcher.submit(work, [len(trajs[i].ids) for i, _ in todo], admitted=admitted)
            except Exception as e:
                if self.engine_dead():  # not the request's fault: 503, and /readyz says so
                    raise APIError(503, f"PRM {self.name!r}: its engine process died; the service restarts",
                                   "model") from e
                raise
            writes = {}
            for (i, hits), sc in zip(todo, computed):
                results[i] = ItemScore(sc, cached_steps=hits)
                self.metrics.tokens_computed.labels(self.name).inc(sc.tokens_computed)
                self.metrics.tokens_reused.labels(self.name).inc(sc.tokens_total - sc.tokens_computed)
                for k, key in enumerate(keys[i]):
                    writes[key] = encode_value(sc.step_rewards[k], sc.token_rewards[k] if sc.token_rewards else None)
            await self.cache.set_many(writes, self.ttl_s)
        return results  # type: ignore[return-value]

    def engine_dead(self) -> bool:
        dead = getattr(self.scorer, "engine_dead", None)  # vLLM engines; a transformers engine lives in-process
        return bool(dead and dead())

    def status(self) -> str:
        """"ok", or why not, from state the engine and the batcher keep (readiness runs no probe)."""
        if self.engine_dead():
            return "dead: the engine process died"
        since = self.batcher.busy_since
        if since is not None and time.monotonic() - since > self.limits.request_timeout_s:
            return f"stuck: an engine call has run for {time.monotonic() - since:.0f} s"
        return "ok"
