"""Graceful shutdown for `repirl serve`: on SIGTERM (or Ctrl+C) the service first drains, then stops.

Draining: `/readyz` answers 503 `{"status": "draining"}` (the orchestrator stops routing here), new requests get
503 + `Connection: close` (server/middleware.py DrainMiddleware), and requests in flight, streams included, run to
the end. When none is left, or `drain_timeout_s` after the signal, uvicorn's own shutdown runs with whatever is left
of that timeout (closing connections, cancelling what is still running), then the app's lifespan stops the batchers
and the engines (vLLM's engine-core processes). A second signal skips the wait. Before, uvicorn closed the listening
socket at once (so `/readyz` could not say anything) and then gave its graceful timeout again after in-flight work.
"""

from __future__ import annotations

import logging
import time

import uvicorn

log = logging.getLogger("repirl.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state):
        super().__init__(config)
        self.state = state
        self.drain_deadline: float | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.drain_deadline is None and not self.should_exit and self.started:
            self.drain_deadline = time.monotonic() + self.state.settings.drain_timeout_s
            self.state.draining = True
            captured = getattr(self, "_captured_signals", None)
            if captured is not None:  # uvicorn re-raises it after the shutdown (exit status -15 for SIGTERM)
                captured.append(sig)
            log.warning("signal %d: draining %d request(s) in flight (at most %.0f s); /readyz says draining",
                        sig, self.state.in_flight, self.state.settings.drain_timeout_s)
            return
        super().handle_exit(sig, frame)  # a second signal (or one before startup finished): stop now

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            left = self.drain_deadline - time.monotonic()
            if self.state.in_flight == 0 or left <= 0:
                # uvicorn's graceful phase gets what is left of the drain timeout, not the whole of it again
                self.config.timeout_graceful_shutdown = max(1, int(left + 0.999))
                self.should_exit = True
        return await super().on_tick(counter)
