"""The app factory. APIs are routers in `ROUTERS`; a new API (e.g. search) is one more package and one more entry.

Engines load in the lifespan (refusing to start with a missing or unreadable model, naming the path); shutdown
(uvicorn's graceful SIGTERM: stop accepting, finish in-flight requests) then stops the batchers and the cache.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import Depends, FastAPI
from starlette.middleware.trustedhost import TrustedHostMiddleware

from repirl.scoring.cache import InProcessCache, RedisCache
from repirl.scoring.loader import load_scorer
from server import errors, openapi
from server.api.health.router import router as health_router
from server.api.models.router import router as models_router
from server.api.rerank.router import router as rerank_router
from server.api.score.router import router as score_router
from server.api.search.router import router as search_router
from server.api.chat.router import router as chat_router
from server.api.playground.router import router as playground_router
from server.api.docs.router import router as docs_router
from server.api.openrlhf.router import router as openrlhf_router
from server.api.pooling.router import router as pooling_router
from server.auth import KeyFile
from server.deps import AppState, require_api_key
from server.health import watch_engines
from server.metrics import Metrics
from server.middleware import (BodyLimitMiddleware, DrainMiddleware, MetricsMiddleware, RequestIdMiddleware,
                               WriteTimeoutMiddleware)
from server.runtime import GuardedCache, PRMRuntime
from server.policies import as_loaded, load_policies
from server.settings import Settings
from server.text_work import TextWork

log = logging.getLogger("repirl.server")

ROUTERS = [health_router, models_router, score_router, rerank_router, search_router, chat_router,
           playground_router, openrlhf_router, pooling_router]


def build_scorers(settings: Settings) -> dict:
    """name -> StepScorer for every --prm (vLLM engines must be built in the main process: uvicorn's); when one
    fails, those already started are closed."""
    from repirl.scoring.families import resolve_prm_config
    from repirl.scoring.loader import resolve_engine

    scorers: dict = {}
    try:
        for name, path in settings.prm_entries():
            cfg, _ = resolve_prm_config(path)  # prm.json, or a hub folder's detected layout (said by the pre-flight)
            engine = resolve_engine(cfg.format, settings.engine)
            if engine == "hf":
                kwargs = {"kv_cache_tokens": settings.hf_kv_cache_tokens, "kv_cache_bytes": settings.hf_kv_cache_bytes,
                          "max_batch_tokens": settings.limits.max_batch_tokens,
                          "forward_tokens": settings.hf_forward_tokens, "device": settings.hf_device,
                          "dtype": settings.hf_dtype}
            else:
                kwargs = settings.vllm_engine_kwargs(prm=True)
            scorers[name] = load_scorer(path, engine=engine, name=name, config=cfg, **kwargs)
            scorers[name].encoder.memo.resize(settings.encode_memo_bytes)  # the budget from settings, engine-neutral
            log.info("loaded PRM %s from %s (format %s, engine %s, revision %s)", name, path,
                     scorers[name].config.format, engine, scorers[name].revision)
    except BaseException:
        _close_all(scorers.values())
        raise
    return scorers


def build_engines(settings: Settings) -> tuple[dict, dict]:
    """(PRM scorers, policies) from settings; engines already started are closed when a later one fails. One after
    the other: transformers' `from_pretrained` is not thread-safe (a transformers PRM and a transformers policy
    loaded in two threads failed with "Cannot copy out of meta tensor"), though two vLLM engines started side by
    side were ready in 26.5 s against 42.0 s one after the other (2 CPU cores)."""
    scorers: dict = {}
    try:
        scorers = build_scorers(settings)
        return scorers, load_policies(settings)
    except BaseException:
        _close_all(scorers.values())
        raise


def _close_all(engines) -> None:
    for obj in engines:
        close = getattr(obj, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # shutting down: log and go on with the others
                log.exception("closing %r failed", obj)


def create_app(settings: Settings, scorers: dict | None = None,
               extra_routers: list | None = None, on_startup: Callable[[AppState], None] | None = None,
               policies: dict | None = None, close_engines: bool | None = None) -> FastAPI:
    """`scorers` (name -> StepScorer) and `policies` (name -> StepPolicy or LoadedPolicy) skip loading from settings
    (`repirl serve` starts them first; benchmarks and tests share engines). `close_engines` (default: when this app
    loads them) stops them at shutdown."""
    if close_engines is None:
        close_engines = scorers is None
    metrics = Metrics()
    state = AppState(settings=settings, metrics=metrics)
    if settings.api_key_file:
        state.key_file = KeyFile(settings.api_key_file)
        state.api_key_hashes = state.key_file.hashes
    redis_password = settings.redis_password_value() if settings.redis_url else None  # unreadable file: ValueError

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.redis_url:
            raw_cache = RedisCache(settings.redis_url, settings.redis_timeout_ms / 1000, password=redis_password)
            log.info("prefix cache: Redis at %s", raw_cache.url)  # the password redacted
        else:
            raw_cache = InProcessCache(settings.cache_max_bytes)
            log.warning("prefix cache: in-process (no --redis-url): not shared between replicas")
        state.cache = GuardedCache(raw_cache, metrics, settings.redis_timeout_ms / 1000, settings.redis_backoff_s)
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        loaded = scorers if scorers is not None else build_scorers(settings)
        state.text_work = TextWork(settings.text_work_threads, settings.limits.max_text_work_bytes, metrics)
        for name, scorer in loaded.items():
            rt = PRMRuntime(name, scorer, state.cache, metrics, settings.limits, ttl_s=settings.cache_ttl_s,
                            salt=settings.cache_salt, text_work=state.text_work)
            rt.batcher.start()
            state.runtimes[name] = rt
        state.policies.update(as_loaded(policies) if policies is not None else load_policies(settings))
        if on_startup:
            on_startup(state)
        log.info("serving %d PRM(s): %s", len(state.runtimes), ", ".join(state.runtimes))
        watchdog = asyncio.create_task(watch_engines(state), name="repirl-engine-watchdog")
        key_watch = _watch_key_file(state)
        try:
            yield
        finally:
            watchdog.cancel()  # before the engines close (closing marks a vLLM engine dead)
            key_watch()
            for rt in state.runtimes.values():
                await rt.batcher.stop()
            state.text_work.close()
            await raw_cache.close()
            if close_engines:  # engines this app owns (vLLM: its engine-core process) stop with it
                _close_all([*loaded.values(), *state.policies.values()])

    # the schema and docs are routes of ours (server/api/docs), behind the API key like every other route; no
    # trailing-slash redirects: Starlette built their Location from the Host header (an open redirect)
    app = _App(title="repirl", version="0.1.0", lifespan=lifespan, dependencies=[Depends(require_api_key)],
               docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.repirl = state
    errors.install(app)
    openapi.install(app, settings.public_paths, secured=state.api_key_hashes is not None)
    for router in ROUTERS + ([docs_router] if settings.openapi_docs else []) + list(extra_routers or []):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(DrainMiddleware, state=state)  # SIGTERM: new requests 503, in-flight ones counted to 0
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    hosts = settings.trusted_hosts()
    if hosts != ["*"]:  # DNS rebinding: a browser reaching a keyless local service under another name gets a 400
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.add_middleware(RequestIdMiddleware)  # added last: outermost, so every response of ours carries the id
    return app


class _App(FastAPI):
    """FastAPI with the write timeout around its whole stack, Starlette's error middleware included: only there is
    `send` the server's own (needed to abort a connection whose client stopped reading)."""

    def build_middleware_stack(self):
        state = self.state.repirl
        return WriteTimeoutMiddleware(super().build_middleware_stack(), state.settings.limits.write_timeout_s,
                                      state.metrics)


def _watch_key_file(state: AppState) -> Callable[[], None]:
    """Reload the API key file when it changes (polled every `api_key_reload_s`) and on SIGHUP, so revoking a key
    needs no restart. Returns what stops both."""
    if state.key_file is None:
        return lambda: None
    key_file = state.key_file

    def reload(force: bool) -> None:
        key_file.reload(force=force)
        state.api_key_hashes = key_file.hashes

    async def poll(interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            reload(force=False)

    loop = asyncio.get_running_loop()
    task = (asyncio.create_task(poll(state.settings.api_key_reload_s), name="repirl-api-key-watch")
            if state.settings.api_key_reload_s > 0 else None)
    try:  # only where the loop runs in the main thread (`repirl serve`; not a test client's thread)
        loop.add_signal_handler(signal.SIGHUP, reload, True)
        hup = True
    except (RuntimeError, ValueError, NotImplementedError):
        hup = False

    def stop() -> None:
        if task is not None:
            task.cancel()
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)

    return stop
