"""Helpers the adapters share: building a client from arguments or the environment, the PRM's step separator, turning
a completion into steps, step values in [0, 1], one client per event loop for async adapters (trainers run their
async reward functions on loops of their own), and adapters that pickle (settings travel, connections do not)."""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from typing import Any, Dict, List, Optional, Tuple

from repirl_client._client import AsyncClient, Client
from repirl_client.types import ModelCard, ModelList, ScoreResult

DEFAULT_SEPARATOR = "\n\n"
# formats whose own step reward is a probability (the service's repirl/scoring/formats.py `is_probability`)
PROBABILITY_FORMATS = frozenset({"qwen-step-tag", "math-shepherd"})


def split_steps(text: str, sep: str) -> List[str]:
    """Steps of a completion: split at the PRM's separator, stripped, empty pieces dropped (as the service does)."""
    return [s.strip() for s in text.split(sep) if s.strip()]


def prm_card(models: ModelList, model: Optional[str]) -> Optional[ModelCard]:
    prms = models.prms
    return models.get(model) if model else (prms[0] if prms else None)


def separator_of(models: ModelList, model: Optional[str]) -> str:
    card = prm_card(models, model)
    return (card.step_separator if card and card.step_separator else None) or DEFAULT_SEPARATOR


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def unit_step_values(result: ScoreResult, fmt: Optional[str]) -> Tuple[List[float], str]:
    """Each step's value in [0, 1] and what it is, the service's own rule (repirl/calibration.py `unit_step_values`):
    `p_correct` when the PRM is calibrated; the raw step reward when the format's is a probability (qwen-step-tag,
    math-shepherd); else `sigmoid` of the raw reward (order-preserving, not a probability)."""
    if result.p_correct is not None:
        return list(result.p_correct), "p_correct"
    if fmt in PROBABILITY_FORMATS:
        return [min(1.0, max(0.0, r)) for r in result.step_rewards], "probability"
    return [_sigmoid(r) for r in result.step_rewards], "sigmoid"


def client_kwargs(base_url, api_key, timeout, max_retries) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {"base_url": base_url, "api_key": api_key}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if max_retries is not None:
        kwargs["max_retries"] = max_retries
    return kwargs


def kwargs_of(client: Any) -> Dict[str, Any]:
    """How to make another client like `client` (a process that unpickles an adapter makes its own)."""
    return {"base_url": client.base_url, "api_key": client.api_key, "timeout": client.timeout,
            "max_retries": client.max_retries}


class LoopClients:
    """One `AsyncClient` per running event loop (an httpx pool cannot move between loops)."""

    def __init__(self, given: Optional[AsyncClient], kwargs: Dict[str, Any]):
        self.given, self.kwargs = given, kwargs
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self) -> AsyncClient:
        if self.given is not None:
            return self.given
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = AsyncClient(**{k: v for k, v in self.kwargs.items() if v is not None})
            return client

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()


def make_client(client: Optional[Client], kwargs: Dict[str, Any]) -> Client:
    if client is not None:
        return client
    return Client(**{k: v for k, v in kwargs.items() if v is not None})


class Picklable:
    """Pickles its settings only: attributes named in `_TRANSIENT` (clients, connection pools, locks, learnt limits)
    are dropped and made again on first use in the process that unpickles it. TRL's AsyncGRPOTrainer pickles its
    `reward_funcs` into a spawned child (trl/experimental/async_grpo/async_rollout_worker.py, AsyncRolloutWorker.start:
    `pickle.dumps(self._loop_kwargs)`); an RLock or a WeakKeyDictionary in them makes that raise."""

    _TRANSIENT: Tuple[str, ...] = ()

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        for key in self._TRANSIENT:
            state[key] = None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)


__all__ = ["split_steps", "separator_of", "prm_card", "unit_step_values", "client_kwargs", "kwargs_of", "LoopClients",
           "make_client", "Picklable", "DEFAULT_SEPARATOR", "PROBABILITY_FORMATS"]
