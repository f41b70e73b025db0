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

from repirl.artifacts import active_calibration
from repirl.scoring.base import StepScores
from repirl.scoring.cache import decode_value, encode_value, prefix_keys
from repirl.scoring.formats import format_facts
from repirl.trajectory import TrajectoryIds
from server.batching import MicroBatcher
from server.errors import APIError, LimitExceeded
from server.metrics import Metrics
from server.settings import Limits
from server.text_work import TextWork

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
# The API key's hash whatever the cache scope ("" without keys): whose turn a request's PRM work takes in the
# micro-batcher's fair queue. Set by the auth dependency; search threads get it passed like TENANT.
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("repirl_caller", default="")


@dataclass
class ItemScore:
    scores: StepScores
    cached_steps: int


class PRMRuntime:
    def __init__(self, name: str, scorer, cache: GuardedCache, metrics: Metrics, limits: Limits, *,
                 ttl_s: int, salt: str | None, text_work: TextWork | None = None):
        self.name, self.scorer, self.cache, self.metrics, self.limits = name, scorer, cache, metrics, limits
        self.ttl_s, self.salt = ttl_s, salt
        self.text_work = text_work  # the app's (server/text_work.py); None: asyncio's default executor
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
                                    max_queue_tokens=limits.max_queue_tokens, fair_quantum_ms=limits.fair_quantum_ms,
                                    fair_window_s=limits.fair_window_s, metrics=metrics)

    @property
    def config(self):
        return self.scorer.config

    def calibration_for(self, aggregate_input: str):
        """The PRM's calibration (None without one); 400 when the request aggregates probabilities and there is
        none."""
        cal = active_calibration(self.config)
        if cal is None and aggregate_input == "probability":
            raise APIError(400, f"PRM {self.name!r} has no calibration (prm.json `calibration`; `repirl calibrate "
                                "--prm DIR` fits one): aggregate_input 'probability' needs one", "aggregate_input")
        return cal

    def cache_salt(self, tenant: str | None) -> str | None:
        """The deployment salt, plus the tenant's key hash when the cache is scoped per key (prefix_keys hashes it)."""
        return self.salt if tenant is None else f"{self.salt or ''}\0tenant\0{tenant}"

    async def off_loop(self, fn, *args):
        """fn(*args) off the event loop: CPU work on request text (tokenizing, templates, parsing), in the app's
        turns by caller (server/text_work.py) when it has them."""
        if self.text_work is None:
            return await asyncio.to_thread(fn, *args)
        return await self.text_work.run(CALLER.get(), fn, *args)

    def _encode_checked(self, items: list[tuple[str, list[str]]], params: list[str]) -> list[TrajectoryIds]:
        """Each item's ids; the first over the token limit is a 413 naming it, and leaves nothing memoised."""
        trajs = []
        for (question, steps), param in zip(items, params):
            traj = self.scorer.encoder.encode(question, steps, token_limit=self.max_tokens)
            if len(traj.ids) > self.max_tokens:  # counted up to the step that went past it (encode's doc)
                raise LimitExceeded(param, len(traj.ids), self.max_tokens, self._max_what,
                                    at_least=len(traj.step_spans) < len(steps))
            trajs.append(traj)
        return trajs

    async def score(self, items: list[tuple[str, list[str]]], params: list[str],
                    tenant: str | None = None, admitted: bool = False, caller: str | None = None) -> list[ItemScore]:
        """`params[i]` names item i in errors (e.g. "items[3]"). `tenant` (default: the request's TENANT) scopes the
        cache entries read and written. `admitted`: a search's call, past its own admission (never a 429 here).
        `caller` (default: the request's CALLER): whose turn the work takes in the fair queue."""
        caller = caller if caller is not None else CALLER.get()
        # work the queue refuses whatever its tokens is refused before they are counted: a flooding key's retries
        # tokenized up to max_items items each only to get a 429, on the cores the engine needs (a request the
        # cache would have answered whole is refused too: its key is told to back off like the others)
        if not admitted and self.batcher.refuses(len(items), 0, caller):
            self.batcher.refuse()
        # tokenizing user text is CPU work: off the event loop (issue 22.1)
        trajs = await self.off_loop(self._encode_checked, items, params)
        return await self.score_trajectories(trajs, params, tenant, admitted, items=items, caller=caller)

    async def score_trajectories(self, trajs: list[TrajectoryIds], params: list[str], tenant: str | None = None,
                                 admitted: bool = False, items: list | None = None,
                                 caller: str | None = None) -> list[ItemScore]:
        """`score` on token ids with their step spans: the trajectory contract's (`score`), or spans cut from raw
        token ids (vLLM's pooling API, server/api/pooling). Cache keys hash the ids through each step's end, so
        both share entries where their ids and step ends agree."""
        if not self._encoded and items is None:  # an engine that only takes (question, steps)
            raise APIError(400, f"PRM {self.name!r}: its engine does not take token ids", "model")
        tenant = tenant if tenant is not None else TENANT.get()
        caller = caller if caller is not None else CALLER.get()
        salt = self.cache_salt(tenant)
        # the engine's own prefix reuse (KV cache, sharing within a batch) stays inside the tenant too
        trajs = [dataclasses.replace(t, scope=tenant or "") for t in trajs]
        for traj, param in zip(trajs, params):
            if len(traj.ids) > self.max_tokens:
                raise LimitExceeded(param, len(traj.ids), self.max_tokens, self._max_what)
        keys = [prefix_keys(self.scorer.revision, t, salt) for t in trajs]
        flat_keys = [k for ks in keys for k in ks]
        raw = await self.cache.get_many(flat_keys) if flat_keys else []
        results: list[ItemScore | None] = [None] * len(trajs)
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
                computed = await self.batcher.submit(work, [len(trajs[i].ids) for i, _ in todo], admitted=admitted,
                                                     key=caller)
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
