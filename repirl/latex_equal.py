"""LaTeX answer equivalence through math-verify, in a worker process that is killed when it takes too long.

Why a process: math-verify's own timeout is `signal.alarm`, which works only in the main thread (in a thread, such as
the service's `asyncio.to_thread`, it raises and every LaTeX answer compared unequal), and no signal interrupts the
C code of a big-integer power: `9^{9^{9}}` ran for over a minute without its timeout. The worker runs math-verify with
its timeouts off; the caller waits `timeout` seconds, then kills and replaces the worker and calls the answers unequal.
Calls are serialised (one worker); answers longer than `MAX_CHARS` are not parsed at all.
"""

from __future__ import annotations

import multiprocessing as mp
import threading

MAX_CHARS = 1_000  # a final answer, not a derivation: longer ones compare as text only
TIMEOUT_S = 3.0
STARTUP_TIMEOUT_S = 120.0

_lock = threading.Lock()
_worker: tuple | None = None  # (process, connection)


def _serve(conn) -> None:  # pragma: no cover - runs in the worker process
    try:
        from math_verify import parse, verify
    except ImportError:  # math-verify is a core dependency; without it nothing is equal beyond string equality
        parse = verify = None
    import logging
    logging.disable(logging.WARNING)  # "Timeout is disabled..." once per call: the caller holds the timeout
    wrap = lambda s: s if "$" in s or "\\" not in s else f"${s}$"  # noqa: E731 - math-verify wants delimiters for LaTeX
    conn.send("ready")  # imports (sympy) take seconds: not counted against a comparison's timeout
    while True:
        try:
            predicted, reference = conn.recv()
        except EOFError:
            return
        ok = False
        if parse is not None:
            try:
                gold = parse(wrap(reference), parsing_timeout=None)
                pred = parse(wrap(predicted), parsing_timeout=None)
                ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))
            except Exception:  # math-verify raises on malformed LaTeX: a malformed answer is simply not equal
                ok = False
        conn.send(ok)


def _start():
    ctx = mp.get_context("spawn")  # no fork of a process holding threads, engines and sockets
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="repirl-math-verify")
    proc.start()
    child.close()
    if not parent.poll(STARTUP_TIMEOUT_S) or parent.recv() != "ready":
        proc.kill()
        raise RuntimeError(f"the math-verify worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
    return proc, parent


def latex_equal(predicted: str, reference: str, timeout: float = TIMEOUT_S) -> bool:
    """Whether math-verify finds the two answers equal; False when either is longer than MAX_CHARS, when parsing
    fails, or when it takes longer than `timeout` seconds (the worker is then replaced)."""
    global _worker
    if len(predicted) > MAX_CHARS or len(reference) > MAX_CHARS:
        return False
    with _lock:
        if _worker is None or not _worker[0].is_alive():
            _worker = _start()
        proc, conn = _worker
        try:
            conn.send((predicted, reference))
            if conn.poll(timeout):
                return bool(conn.recv())
        except (EOFError, OSError, BrokenPipeError):
            pass
        proc.kill()
        proc.join(5)
        conn.close()
        _worker = None
        return False
