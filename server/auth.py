"""API keys: read from a file, kept only as sha256 hashes, compared in constant time.

File format: one key per line; a line `sha256:<hex>` is an already-hashed key (so the file itself need not hold
secrets); blank lines and `#` comments are ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

log = logging.getLogger("repirl.server")


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


class KeyFile:
    """The API key file, read again when it changes (its mtime, size or inode: a Kubernetes Secret volume swaps a
    symlink) or on demand (SIGHUP). A file that cannot be used (unreadable, malformed, empty) keeps the keys already
    loaded: a half-written file must not lock everyone out, nor open the service."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._seen = self._signature()
        self.hashes = load_key_hashes(self.path)  # at start, a bad file is the caller's error

    def _signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload(self, force: bool = False) -> bool:
        """Re-read the file when it changed (or `force`); whether the keys now in use changed."""
        seen = self._signature()
        if not force and seen == self._seen:
            return False
        self._seen = seen
        try:
            hashes = load_key_hashes(self.path)
        except ValueError as e:
            log.error("API keys not reloaded, the %d loaded stay in use: %s", len(self.hashes), e)
            return False
        changed = hashes != self.hashes
        self.hashes = hashes
        if changed:
            log.warning("API keys reloaded from %s: %d key(s)", self.path, len(hashes))
        return changed
