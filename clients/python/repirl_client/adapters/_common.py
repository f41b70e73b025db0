"""Helpers the adapters share: building a client from arguments or the environment, the PRM's step separator, turning
a completion into steps, and one client per event loop for async adapters (trainers run their async reward
functions on loops of their own)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Dict, List, Optional

from repirl_client._client import AsyncClient, Client
from repirl_client.types import ModelList

DEFAULT_SEPARATOR = "\n\n"


def split_steps(text: str, sep: str) -> List[str]:
    """Steps of a completion: split at the PRM's separator, stripped, empty pieces dropped (as the service does)."""
    return [s.strip() for s in text.split(sep) if s.strip()]


def separator_of(models: ModelList, model: Optional[str]) -> str:
    prms = models.prms
    card = models.get(model) if model else (prms[0] if prms else None)
    return (card.step_separator if card and card.step_separator else None) or DEFAULT_SEPARATOR


def client_kwargs(base_url, api_key, timeout, max_retries) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {"base_url": base_url, "api_key": api_key}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if max_retries is not None:
        kwargs["max_retries"] = max_retries
    return kwargs


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


__all__ = ["split_steps", "separator_of", "client_kwargs", "LoopClients", "make_client", "DEFAULT_SEPARATOR"]
