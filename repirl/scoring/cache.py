"""The prefix cache of step rewards (ARCHITECTURE "Cache"): one key per prefix through step k.

Key: `repirl:v1:{prm_revision}:{sha256(prefix token ids through step k)}` (the salt, when set, is hashed in first,
so tenants never share entries). Value: JSON `{"r": step reward, "t": [token rewards] | null}`; no pickle, and a
value is used only after it validates (finite floats, right number of token rewards), otherwise it is a miss.

Two backends behind one async interface: Redis (redis-py asyncio, shared by replicas) and an in-process LRU with TTL
(no Redis configured). Error handling (fail open) is the caller's: backends raise, the service counts and moves on.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from typing import Protocol, Sequence

from repirl.trajectory import TrajectoryIds

KEY_PREFIX = "repirl:v1"


def prefix_keys(revision: str, traj: TrajectoryIds, salt: str | None = None) -> list[str]:
    """One key per step: the hash of the token ids through the end of that step. Incremental, so linear in length."""
    h = hashlib.sha256()
    if salt:
        h.update(b"salt\0" + salt.encode() + b"\0")
    h.update(_ids_bytes(traj.ids[: traj.prompt_len]))
    keys = []
    for start, end in traj.step_spans:
        h.update(_ids_bytes(traj.ids[start:end]))
        keys.append(f"{KEY_PREFIX}:{revision}:{h.copy().hexdigest()}")
    return keys


def _ids_bytes(ids: Sequence[int]) -> bytes:
    return b"".join(int(i).to_bytes(4, "little", signed=False) for i in ids)


def encode_value(reward: float, token_rewards: list[float] | None) -> str:
    return json.dumps({"r": reward, "t": token_rewards}, separators=(",", ":"))


def decode_value(raw: str | bytes | None, n_tokens: int, want_tokens: bool) -> tuple[float, list[float] | None] | None:
    """(reward, token rewards) if `raw` is a valid entry for a step of `n_tokens` tokens, else None (a miss)."""
    if raw is None:
        return None
    try:
        obj = json.loads(raw)
        reward = obj["r"]
        tokens = obj.get("t")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not _finite(reward):
        return None
    if tokens is not None:
        if not isinstance(tokens, list) or len(tokens) != n_tokens or not all(_finite(x) for x in tokens):
            return None
    elif want_tokens:
        return None
    return float(reward), ([float(x) for x in tokens] if tokens is not None else None)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def redact_url(url: str) -> str:
    """The URL without its password, for logs (redis://user:***@host:6379/0)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.hostname or ""
    netloc = f"{user}***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PrefixCache(Protocol):
    kind: str

    async def get_many(self, keys: Sequence[str]) -> list[bytes | str | None]: ...

    async def set_many(self, entries: dict[str, str], ttl_s: int) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class InProcessCache:
    """An LRU with per-entry expiry, for a single process (no Redis configured), bounded by the bytes it holds."""

    kind = "in-process"

    def __init__(self, max_bytes: int = 256 << 20):
        from repirl.bounded import ByteLRU

        self._data = ByteLRU(max_bytes, largest_share=1)  # entries are a step's rewards: small, similar sizes

    async def get_many(self, keys):
        now, out = time.monotonic(), []
        for k in keys:
            hit = self._data.get(k)
            out.append(hit[1] if hit is not None and hit[0] >= now else None)
        return out

    async def set_many(self, entries, ttl_s):
        from repirl.bounded import str_bytes

        expiry = time.monotonic() + ttl_s
        for k, v in entries.items():  # key and value strings, the pair, and the LRU's slot
            self._data.put(k, (expiry, v), str_bytes(k) + str_bytes(v) + 120)

    async def ping(self):
        return True

    async def close(self):
        self._data.clear()


class RedisCache:
    """Redis via redis-py asyncio with short socket timeouts: a dead or slow Redis costs at most ~timeout_s."""

    kind = "redis"

    def __init__(self, url: str, timeout_s: float = 0.05, password: str | None = None):
        """`url`: redis:// or rediss:// (TLS), options as redis-py reads them; `password`: AUTH (a password in the
        URL wins)."""
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = redact_url(url)
        self.timeout_s = timeout_s
        extra = {"password": password} if password is not None else {}
        self._client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                         retry=Retry(NoBackoff(), 0), health_check_interval=0, **extra)

    async def get_many(self, keys):
        if not keys:
            return []
        return await self._client.mget(list(keys))  # one round trip for every prefix of every item

    async def set_many(self, entries, ttl_s):
        if not entries:
            return
        pipe = self._client.pipeline(transaction=False)
        for k, v in entries.items():
            pipe.set(k, v, ex=ttl_s)
        await pipe.execute()

    async def ping(self):
        return bool(await self._client.ping())

    async def close(self):
        await self._client.aclose()
