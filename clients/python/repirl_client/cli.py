"""`repirl-client`: call the service from a shell; every command prints JSON (one object; `--stream`: one per line).

Connection: --base-url (env REPIRL_BASE_URL, default http://127.0.0.1:8000), --api-key (env REPIRL_API_KEY),
--timeout, --max-retries. Errors print the service's error JSON (plus the request id) on stderr and exit 1
(2 for a usage error, 3 when the service cannot be reached)."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any, List, Optional, Sequence

from repirl_client._client import Client
from repirl_client._exceptions import APIConnectionError, APIStatusError, RepirlError
from repirl_client._version import __version__
from repirl_client.types import Strategy

EXAMPLES = """\
examples:
  repirl-client models
  repirl-client score --question "Start with 3. Add 4, then multiply by 2. What is the result?" \\
      --step "3+4=7" --step "7*2=14" --step "Answer: 14"
  repirl-client score --question-file q.txt --steps-file steps.txt --aggregation min --token-rewards
  repirl-client score --items-file batch.jsonl                 # {"question": ..., "steps": [...]} per line
  repirl-client rerank --question "..." --candidates-file cands.json --voting weighted
  repirl-client search --question "..." --strategy beam --n 8 --beam-width 4 --seed 0 --stream
"""


def _read(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text()


def _steps_from_file(path: str) -> List[str]:
    """A JSON list of strings, or one step per non-empty line."""
    text = _read(path)
    try:
        data = json.loads(text)
        if isinstance(data, list) and all(isinstance(s, str) for s in data):
            return data
    except ValueError:
        pass
    return [line for line in text.splitlines() if line.strip()]


def _json_or_lines(path: str) -> List[Any]:
    text = _read(path)
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _question(args) -> str:
    if args.question_file:
        return _read(args.question_file).strip()
    if args.question:
        return args.question
    raise SystemExit("repirl-client: give --question or --question-file")


def _print(obj: Any) -> None:
    data = obj.model_dump(mode="json", exclude_none=True) if hasattr(obj, "model_dump") else obj
    print(json.dumps(data, ensure_ascii=False))
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="repirl-client", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score reasoning steps, rerank candidate solutions and run step-level searches against a repirl "
                    "PRM service. Every command prints JSON on stdout.", epilog=EXAMPLES)
    p.add_argument("--version", action="version", version=f"repirl-client {__version__}")
    p.add_argument("--base-url", help="service URL (default: $REPIRL_BASE_URL, else http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default: $REPIRL_API_KEY)")
    p.add_argument("--timeout", type=float, help="seconds per request (default 180)")
    p.add_argument("--max-retries", type=int, help="retries on connection errors, 408/409/429/5xx (default 2)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_question(sp):
        sp.add_argument("--question", help="the question (the PRM scores steps of it)")
        sp.add_argument("--question-file", metavar="FILE", help="read the question from FILE ('-': stdin)")

    sp = sub.add_parser("score", help="per-step rewards of one solution or a batch (POST /v1/score)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Per-step rewards and the aggregate score. One solution: --question plus its "
                                    "steps (--step, repeated, or --steps-file). A batch: --items-file.")
    add_question(sp)
    sp.add_argument("--step", action="append", metavar="TEXT", help="one step (repeat in order)")
    sp.add_argument("--steps-file", metavar="FILE", help="steps: a JSON list, or one per line ('-': stdin)")
    sp.add_argument("--items-file", metavar="FILE",
                    help="a batch: JSON list or JSON lines of {\"question\": ..., \"steps\": [...]}")
    sp.add_argument("--model", help="PRM name (default: the service's first; see `models`)")
    sp.add_argument("--aggregation", choices=["mean-token", "min", "last", "prod", "sum"],
                    help="step rewards -> score (default: the PRM's)")
    sp.add_argument("--token-rewards", action="store_true", help="also return every token's reward")

    sp = sub.add_parser("rerank", help="rank candidate solutions (POST /v1/rerank)",
                        description="Rank candidate solutions of one question by PRM score, optionally voting over "
                                    "their final answers.")
    add_question(sp)
    sp.add_argument("--candidate", action="append", metavar="TEXT",
                    help="a candidate solution (text split at the PRM's separator; repeat)")
    sp.add_argument("--candidates-file", metavar="FILE",
                    help="JSON list of candidates (each a text or a list of steps), or JSON lines")
    sp.add_argument("--model", help="PRM name")
    sp.add_argument("--aggregation", choices=["mean-token", "min", "last", "prod", "sum"])
    sp.add_argument("--voting", choices=["none", "weighted", "majority"], help="default none: the best score wins")
    sp.add_argument("--top-n", type=int, help="return only the best N results")

    sp = sub.add_parser("search", help="best-of-n / beam / dvts search with the policy (POST /v1/search)",
                        description="Sample solutions with the service's policy, scored step by step by the PRM. "
                                    "--stream prints one JSON line per search step, then the result.")
    add_question(sp)
    sp.add_argument("--strategy", choices=list(typing.get_args(Strategy)))
    sp.add_argument("--n", type=int, help="samples (best-of-n) or candidates per step (beam/dvts)")
    sp.add_argument("--beam-width", type=int, help="beam/dvts: samples per kept beam (must divide n)")
    sp.add_argument("--max-steps", type=int)
    sp.add_argument("--select", choices=["naive", "weighted", "majority"])
    sp.add_argument("--aggregation", choices=["mean-token", "min", "last", "prod", "sum"])
    sp.add_argument("--temperature", type=float)
    sp.add_argument("--top-p", type=float)
    sp.add_argument("--max-step-tokens", type=int)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--lookahead", type=int)
    sp.add_argument("--model", help="PRM name")
    sp.add_argument("--policy", help="policy name")
    sp.add_argument("--no-candidates", action="store_true", help="leave the completed candidates out")
    sp.add_argument("--stream", action="store_true", help="server-sent events: a JSON line per step, then the result")

    sub.add_parser("models", help="the PRMs and the policy the service serves (GET /v1/models)")
    sub.add_parser("health", help="readiness of every engine (GET /readyz); exit 1 when not ready")
    return p


def run(args, client: Client) -> int:
    if args.command == "score":
        if args.items_file:
            _print(client.score(items=_json_or_lines(args.items_file), model=args.model,
                                aggregation=args.aggregation, return_token_rewards=args.token_rewards))
            return 0
        steps = list(args.step or []) + (_steps_from_file(args.steps_file) if args.steps_file else [])
        if not steps:
            raise SystemExit("repirl-client score: give the steps (--step ... or --steps-file), or --items-file")
        _print(client.score(question=_question(args), steps=steps, model=args.model, aggregation=args.aggregation,
                            return_token_rewards=args.token_rewards))
    elif args.command == "rerank":
        cands = list(args.candidate or []) + (_json_or_lines(args.candidates_file) if args.candidates_file else [])
        if not cands:
            raise SystemExit("repirl-client rerank: give --candidate ... or --candidates-file")
        _print(client.rerank(question=_question(args), candidates=cands, model=args.model,
                             aggregation=args.aggregation, voting=args.voting, top_n=args.top_n))
    elif args.command == "search":
        kwargs = dict(question=_question(args), strategy=args.strategy, n=args.n, beam_width=args.beam_width,
                      max_steps=args.max_steps, select=args.select, aggregation=args.aggregation,
                      temperature=args.temperature, top_p=args.top_p, max_step_tokens=args.max_step_tokens,
                      seed=args.seed, lookahead=args.lookahead, model=args.model, policy=args.policy,
                      return_candidates=False if args.no_candidates else None)
        if args.stream:
            with client.search(stream=True, **kwargs) as stream:
                for event in stream:
                    _print(event)
        else:
            _print(client.search(**kwargs))
    elif args.command == "models":
        _print(client.models())
    elif args.command == "health":
        health = client.health()
        _print(health)
        return 0 if health.ready else 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs: dict = {"base_url": args.base_url, "api_key": args.api_key}
    if args.timeout is not None:
        kwargs["timeout"] = args.timeout
    if args.max_retries is not None:
        kwargs["max_retries"] = args.max_retries
    try:
        with Client(**kwargs) as client:
            return run(args, client)
    except APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {"error": {"message": str(e.body)}}
        print(json.dumps({**body, "status": e.status_code, "request_id": e.request_id}), file=sys.stderr)
        return 1
    except APIConnectionError as e:
        print(json.dumps({"error": {"type": "connection_error", "message": f"{e.message} ({e.__cause__})"}}),
              file=sys.stderr)
        return 3
    except RepirlError as e:
        print(json.dumps({"error": {"type": type(e).__name__, "message": str(e)}}), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
