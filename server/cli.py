"""`repirl serve`: settings from flags/env/YAML, a pre-flight check of every model path, then uvicorn."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_POLICY = "runs/demo/policy"


def _fail(message: str) -> None:
    typer.echo(f"repirl serve: {message}", err=True)
    raise typer.Exit(2)


def preflight(settings) -> None:
    """Refuse to start, naming the path, when a model folder is missing or unreadable."""
    from repirl.artifacts import ArtifactError, check_model_folder
    from repirl.scoring.families import resolve_prm_config

    for name, path in settings.prm_entries():
        try:
            _, reason = resolve_prm_config(path)  # a hub folder without prm.json: its family's layout, said here
            check_model_folder(path)
            if reason:
                typer.echo(f"repirl serve: PRM '{name}': {reason}", err=True)
        except ArtifactError as e:
            hint = " (run `repirl bootstrap` to build the demo)" if str(path) == "runs/demo/prm" else ""
            _fail(f"cannot serve PRM '{name}': {e}{hint}")
    from repirl.policy.spec import PolicySpec

    folder = PolicySpec.parse(settings.policy).folder if settings.policy else None
    if folder is not None:  # a URL is checked when the service connects to it
        try:
            check_model_folder(folder)
        except ArtifactError as e:
            _fail(f"cannot use policy: {e}")


def serve(
    prm: Annotated[Optional[list[str]], typer.Option("--prm", help="PRM folder, PATH or NAME=PATH (repeatable); "
                                                     "default runs/demo/prm")] = None,
    policy: Annotated[Optional[str], typer.Option(help="policy folder or OpenAI-compatible URL; "
                                                  "default runs/demo/policy when present")] = None,
    host: Annotated[Optional[str], typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default 8000)")] = None,
    redis_url: Annotated[Optional[str], typer.Option(help="redis://... for the shared prefix cache; "
                                                     "default: in-process cache")] = None,
    api_key_file: Annotated[Optional[Path], typer.Option(help="file of API keys (one per line, or sha256:HEX)")] = None,
    engine: Annotated[Optional[str], typer.Option(help="PRM engine: auto | vllm | hf")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML settings file (REPIRL_* env vars "
                                                   "and flags override it)")] = None,
    trust_request_chat_template: Annotated[bool, typer.Option(
        "--trust-request-chat-template", help="render chat templates that /pooling and /classify requests send "
        "(vLLM's flag; off: a 400). A template is code: only for clients you trust")] = False,
) -> None:
    """Serve PRMs over HTTP: /v1/score, /v1/rerank, /v1/models, /livez, /readyz, /metrics."""
    from repirl.vllm_setup import quiet_logs

    quiet_logs()  # before vLLM is imported
    import uvicorn
    from pydantic import ValidationError

    from server.settings import load_settings

    config = config or (Path(os.environ["REPIRL_CONFIG"]) if os.environ.get("REPIRL_CONFIG") else None)
    try:
        settings = load_settings(config, prm=prm or None, policy=policy, host=host, port=port, redis_url=redis_url,
                                 api_key_file=str(api_key_file) if api_key_file else None, engine=engine,
                                 trust_request_chat_template=trust_request_chat_template or None)
    except FileNotFoundError as e:
        _fail(str(e))
    except ValidationError as e:
        from repirl.validation import describe

        _fail(describe(e, noun="setting"))
    if settings.policy is None and Path(DEFAULT_POLICY).is_dir() and settings.prm == ["runs/demo/prm"]:
        settings.policy = DEFAULT_POLICY
    preflight(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from repirl.vllm_setup import EngineStartError
    from server.app import build_engines, create_app
    from server.health import EXIT_ENGINE_DEAD

    # Engines start here, not in the app's lifespan, so one that cannot start ends the command with exit 2 and one
    # line naming the setting to change (a failure inside uvicorn's lifespan prints a traceback and exits 3).
    try:
        scorers, policies = build_engines(settings)
    except EngineStartError as e:
        _fail(str(e))
    try:
        app = create_app(settings, scorers=scorers, policies=policies, close_engines=True, on_startup=_banner)
    except ValueError as e:  # e.g. an unreadable API key file
        _fail(str(e))
    from server.drain import DrainingServer

    state = app.state.repirl
    # SIGTERM: /readyz says draining, new requests 503, in-flight ones finish, then shutdown (server/drain.py)
    server = DrainingServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                           timeout_graceful_shutdown=int(settings.drain_timeout_s) or None), state)
    state.on_fatal = lambda: setattr(server, "should_exit", True)  # a dead engine (server/health.py): drain, exit
    server.run()
    if state.fatal:  # non-zero, so the orchestrator restarts the service (its engine process does not come back)
        typer.echo(f"repirl serve: {state.fatal}", err=True)
        raise typer.Exit(EXIT_ENGINE_DEAD)
    if not server.started:  # as uvicorn.run: the startup failed (uvicorn logged why)
        raise typer.Exit(3)


def _banner(state) -> None:
    """What a user wants once the service is up: where, what, and one request to try."""
    s = state.settings
    url = f"http://{'127.0.0.1' if s.host in ('0.0.0.0', '::') else s.host}:{s.port}"
    key = " -H 'Authorization: Bearer YOUR_KEY'" if state.api_key_hashes is not None else ""
    lines = [f"repirl serving on {url}"]
    for name, rt in state.runtimes.items():
        lines.append(f"  PRM {name}: {rt.config.format} on {rt.scorer.engine}")
    for name, policy in state.policies.items():
        lines.append(f"  {name}: {policy.root} ({type(policy.engine).__name__})")
    body = '{"question": "Start with 9. Multiply by 4, then subtract 2. What is the result?", ' \
           '"steps": ["9*4=36", "36-2=34", "Answer: 34"]}'
    lines += [f"  try: curl -s {url}/v1/score{key} -H 'Content-Type: application/json' -d '{body}'",
              f"  docs: {url}/docs   metrics: {url}/metrics   (Ctrl+C stops)"]
    typer.echo("\n".join(lines))
