"""API keys: read from a file, kept only as sha256 hashes, compared in constant time.

File format: one key per line; a line `sha256:<hex>` is an already-hashed key (so the file itself need not hold
secrets); blank lines and `#` comments are ignored.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_key_hashes(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"API key file {path} is unreadable: {e}") from None
    hashes = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("sha256:"):
            digest = line[len("sha256:"):].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"API key file {path}: malformed sha256 line")
            hashes.append(digest)
        else:
            hashes.append(hash_key(line))
    if not hashes:
        raise ValueError(f"API key file {path} holds no keys")
    return hashes


def key_matches(presented: str | None, hashes: list[str]) -> bool:
    """Constant-time over every stored hash (no early exit that would leak which key matched)."""
    if not presented:
        return False
    digest = hash_key(presented)
    ok = False
    for h in hashes:
        ok |= hmac.compare_digest(digest, h)
    return ok
