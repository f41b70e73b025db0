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
    try:
        resp = client.post(path, json=body)
    except httpx.HTTPError as e:
        raise PolicyError(f"policy server {client.base_url}{path} unreachable: {e}") from None
    if resp.status_code != 200:
        raise PolicyError(f"policy server {client.base_url}{path} answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()


def _token_id(token: str) -> int:
    # with return_tokens_as_token_ids vLLM writes each token as "token_id:123"
    try:
        return int(token.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise PolicyError(f"policy server returned token {token!r}, expected 'token_id:N'") from None


class RemotePolicy:
    def __init__(self, base_url: str, model: str | None = None, policy_dir: str | Path | None = None,
                 timeout_s: float = 120.0, api_key: str | None = None):
        base_url = base_url.rstrip("/")
        if base_url.endswith("/v1"):
            base_url = base_url[: -len("/v1")]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers)
        self.model = model or self._first_model()
        self.name = self.model
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

    def _first_model(self) -> str:
        try:
            resp = self.client.get("/v1/models")
            resp.raise_for_status()
            return resp.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            raise PolicyError(f"cannot list models at {self.client.base_url}/v1/models: {e}") from None

    def sample_steps(self, prefixes: Sequence[Prefix], params: SamplingConfig) -> list[list[StepSample]]:
        if not prefixes:
            return []
        sep = self.config.step_separator
        body = {
            "model": self.model,
            "prompt": [self.encoder.encode(q, steps).ids for q, steps in prefixes],
            "n": request_n(params),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
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
