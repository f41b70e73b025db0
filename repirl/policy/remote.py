"""A policy served by a remote OpenAI-compatible server (an existing `vllm serve` / vLLM api_server).

Prompts go out as token ids (`/v1/completions` accepts a list of id lists), built locally by the TrajectoryEncoder,
so the server never re-tokenizes a trajectory differently from the PRM. The tokenizer and policy.json come from a
local copy of the policy folder when one is given (or when the served model name is a local folder, vLLM's
default); otherwise the server's own `/tokenize` endpoint tokenizes each piece and policy.json defaults apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import httpx

from repirl.artifacts import PolicyConfig, load_policy_config
from repirl.policy.base import (PolicyError, Prefix, SamplingConfig, StepSample, encoder_for, fill_greedy, make_step,
                                prefix_seed, request_n)


class RemoteTokenizer:
    """The two tokenizer calls the encoder needs, answered by vLLM's /tokenize and /detokenize."""

    chat_template = None

    def __init__(self, client: httpx.Client, model: str):
        self._client, self._model = client, model

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        body = {"model": self._model, "prompt": text, "add_special_tokens": add_special_tokens}
        return list(_post(self._client, "/tokenize", body)["tokens"])

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return _post(self._client, "/detokenize", {"model": self._model, "tokens": list(ids)})["prompt"]


def _post(client: httpx.Client, path: str, body: dict) -> dict:
    """The answer's JSON, or a PolicyError whose public part names neither the server nor what it answered."""
    try:
        resp = client.post(path, json=body)
    except httpx.HTTPError as e:
        raise PolicyError(f"policy server {client.base_url}{path} unreachable: {e}",
                          public="the policy server is unreachable") from None
    if resp.status_code != 200:
        raise PolicyError(f"policy server {client.base_url}{path} answered {resp.status_code}: {resp.text[:300]}",
                          public=f"the policy server answered {resp.status_code}")
    try:
        return resp.json()
    except ValueError:
        raise PolicyError(f"policy server {client.base_url}{path} answered non-JSON: {resp.text[:300]}",
                          public="the policy server's answer was malformed") from None


def _token_id(token: str) -> int:
    # with return_tokens_as_token_ids vLLM writes each token as "token_id:123"
    try:
        return int(token.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise PolicyError(f"policy server returned token {token!r}, expected 'token_id:N'",
                          public="the policy server's answer was malformed") from None


def _positive_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class RemotePolicy:
    def __init__(self, base_url: str, model: str | None = None, policy_dir: str | Path | None = None,
                 timeout_s: float = 120.0, api_key: str | None = None, max_connections: int = 100):
        """`max_connections`: the pool; the service sizes it to the searches it admits at once."""
        base_url = base_url.rstrip("/")
        if base_url.endswith("/v1"):
            base_url = base_url[: -len("/v1")]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers,
                                   limits=httpx.Limits(max_connections=max_connections,
                                                       max_keepalive_connections=min(20, max_connections)))
        self.model, card = self._model_card(model)
        self.name = self.model
        # prompt + generated tokens the server takes (vLLM's /v1/models says `max_model_len`): the service refuses a
        # question that cannot fit with a 413 naming it, instead of relaying the server's 400 as a 503
        self.context_tokens: int | None = _positive_int(card.get("max_model_len"))
        local = Path(policy_dir) if policy_dir else Path(self.model)
        if (local / "config.json").is_file():
            from transformers import AutoTokenizer

            self.config = load_policy_config(local)
            self.tokenizer = AutoTokenizer.from_pretrained(local)
        elif policy_dir:
            raise PolicyError(f"policy_dir {policy_dir} is not a model folder (no config.json)")
        else:
            self.config = PolicyConfig()
            self.tokenizer = RemoteTokenizer(self.client, self.model)
        self.encoder = encoder_for(self.tokenizer, self.config)

    def _model_card(self, model: str | None) -> tuple[str, dict]:
        """(model name, its /v1/models card): the first model when none is named. A named model needs no listing
        (some OpenAI-compatible servers have none): its card is then empty, and its context unknown."""
        try:
            resp = self.client.get("/v1/models")
            resp.raise_for_status()
            cards = [c for c in resp.json()["data"] if isinstance(c, dict)]
            if model is None:
                return cards[0]["id"], cards[0]
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as e:
            if model is None:
                raise PolicyError(f"cannot list models at {self.client.base_url}/v1/models: {e}") from None
            return model, {}
        return model, next((c for c in cards if c.get("id") == model), {})

    def sample_steps(self, prefixes: Sequence[Prefix], params: SamplingConfig) -> list[list[StepSample]]:
        if not prefixes:
            return []
        sep = self.config.step_separator
        prompts = [self.encoder.encode(q, steps).ids for q, steps in prefixes]
        max_tokens = params.max_tokens
        if self.context_tokens is not None:  # checked here, as the in-process engines do, not by the server's 400
            longest = max(len(p) for p in prompts)
            if longest >= self.context_tokens:
                raise PolicyError(f"prompt of {longest} tokens leaves no room under max_model_len={self.context_tokens}")
            max_tokens = min(max_tokens, self.context_tokens - longest)
        body = {
            "model": self.model,
            "prompt": prompts,
            "n": request_n(params),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": max_tokens,
            "stop": [sep],
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": True,
        }
        if params.seed is not None:
            body["seed"] = prefix_seed(params.seed, 0)  # wrapped into the int64 range a vLLM server accepts
        choices = _post(self.client, "/v1/completions", body).get("choices", [])
        n = request_n(params)
        if len(choices) != len(prefixes) * n:
            raise PolicyError(f"policy server returned {len(choices)} choices for {len(prefixes)} x n={n}")
        result: list[list[StepSample]] = [[] for _ in prefixes]
        for c in sorted(choices, key=lambda c: c["index"]):  # index = prompt * n + sample (OpenAI batch order)
            lp = c.get("logprobs") or {}
            ids = [_token_id(t) for t in lp.get("tokens") or []]
            lps = [float(x) if x is not None else 0.0 for x in lp.get("token_logprobs") or []]
            hit_eos = c.get("finish_reason") == "stop" and c.get("stop_reason") is None
            result[c["index"] // n].append(
                make_step(c.get("text", ""), ids, lps, sep, hit_eos=hit_eos,
                          hit_length=c.get("finish_reason") == "length"))
        return [fill_greedy(samples, params.n) for samples in result]

    def close(self) -> None:
        self.client.close()
