"""The one parser of policy specs, shared by `load_policy`, `repirl serve` (its pre-flight check and the policy it
loads), and the evaluator's CLI. Before, four places each tested `startswith("vllm:")`, `"hf:"` or `"http"` on their
own, and disagreed (the evaluator took `vllm:DIR` for a missing folder).

Forms: `http(s)://host:port[/v1]` (a remote OpenAI-compatible server), `vllm:DIR` (vLLM in-process), `hf:DIR`
(transformers), or a plain DIR whose engine is the caller's default (`auto`: vLLM when installed, else transformers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

Engine = Literal["auto", "vllm", "transformers", "remote"]
ENGINES: tuple[str, ...] = get_args(Engine)
_PREFIXES = {"vllm:": "vllm", "hf:": "transformers"}


@dataclass(frozen=True)
class PolicySpec:
    """`target` is the URL or the folder; `engine` is what the spec names, or the default it was parsed with."""

    target: str
    engine: Engine
    named: bool = False  # the spec itself chose the engine (URL or prefix): a caller's default does not apply

    @classmethod
    def parse(cls, spec: str | Path, default: str = "auto") -> PolicySpec:
        if default not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {default!r}")
        text = str(spec)
        if text.startswith(("http://", "https://")):
            return cls(text, "remote", named=True)
        for prefix, engine in _PREFIXES.items():
            if text.startswith(prefix):
                return cls(text[len(prefix):], engine, named=True)  # type: ignore[arg-type]
        return cls(text, default)  # type: ignore[arg-type]

    @property
    def remote(self) -> bool:
        return self.engine == "remote"

    @property
    def folder(self) -> Path | None:
        """The model folder to check before loading; None for a remote server."""
        return None if self.remote else Path(self.target)

    def resolved_engine(self) -> str:
        """`auto` made concrete: vLLM when it imports, else transformers."""
        if self.engine != "auto":
            return self.engine
        from repirl.vllm_setup import vllm_available

        return "vllm" if vllm_available() else "transformers"

    def __str__(self) -> str:
        prefix = {"vllm": "vllm:", "transformers": "hf:"}.get(self.engine, "") if self.named else ""
        return prefix + self.target
