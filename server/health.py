"""Engine health as state the engines and runtimes keep, read by /readyz without running anything (a probe per call
made readiness a denial-of-service lever: 32 clients polling it took scoring p99 from 114 ms to 2.2 s), and a
watchdog that ends the process when an engine has died: vLLM's engine-core process does not come back, and every
later request would fail while the replica still looked alive. The orchestrator restarts it (exit status 4)."""

from __future__ import annotations

import asyncio
import logging

from server.deps import AppState

log = logging.getLogger("repirl.server")
WATCH_S = 0.5
EXIT_ENGINE_DEAD = 4


def engine_status(state: AppState) -> dict[str, str]:
    """Every engine's name -> "ok" or why not (PRMs, then policies)."""
    return {**{name: rt.status() for name, rt in state.runtimes.items()},
            **{name: p.status() for name, p in state.policies.items()}}


async def watch_engines(state: AppState) -> None:
    """Until an engine is dead: then the service is `fatal` (/readyz: 503 naming it) and `on_fatal` stops it."""
    while True:
        await asyncio.sleep(WATCH_S)
        dead = [f"{name} ({s})" for name, s in engine_status(state).items() if s.startswith("dead")]
        if dead:
            state.fatal = f"engine died: {', '.join(dead)}"
            log.error("%s; %s", state.fatal, f"stopping (exit status {EXIT_ENGINE_DEAD}) to be restarted"
                      if state.on_fatal else "the service stays unready")
            if state.on_fatal is not None:
                state.on_fatal()
            return
