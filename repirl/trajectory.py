"""The trajectory contract: (question, steps) -> token ids with exact step spans.

Every model in the project (policy, PRM, evaluator, server) tokenizes a trajectory through `TrajectoryEncoder`:

    ids = prompt_ids(question) + ids(step_1 + SEP) + ids(step_2 + SEP) + ...

Each piece is tokenized on its own, so the ids of a prefix never change when steps are appended and every step's
token span is known exactly. That property is what makes prefix caching (Redis keys, KV reuse) correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

from pydantic import BaseModel

DEFAULT_SEP = "\n\n"
PLAIN_TEMPLATE = "Question: {question}\nSolution:\n"


class Tokenizer(Protocol):  # the part of a Hugging Face tokenizer we rely on
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


class PromptTemplate(BaseModel):
    """How a question becomes the prompt text. Stored in artifacts (prm.json) so trainer and server agree."""

    kind: Literal["plain", "chat"] = "plain"
    template: str = PLAIN_TEMPLATE  # used by kind=plain; must contain "{question}"
    system: str | None = None  # used by kind=chat
    # text that joins the question to the first step, tokenized WITH the first step: a card that writes
    # f"{question} {step_1}" in one string tokenizes " Step" as one token, which a prompt ending in " " would split
    first_step_prefix: str = ""

    def render(self, question: str, tokenizer=None) -> str:
        if self.kind == "plain":
            return self.template.replace("{question}", question)
        if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("prompt template kind 'chat' needs a tokenizer with a chat template")
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": question}
        ]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def split_steps(text: str, sep: str = DEFAULT_SEP) -> list[str]:
    """Split a solution into steps; empty pieces (e.g. a trailing separator) are dropped."""
    return [s.strip() for s in text.split(sep) if s.strip()]


def join_steps(steps: Sequence[str], sep: str = DEFAULT_SEP) -> str:
    """The exact text the token ids of `steps` spell (each step followed by the separator)."""
    return "".join(step + sep for step in steps)


@dataclass(frozen=True)
class TrajectoryIds:
    ids: list[int]
    prompt_len: int
    step_spans: list[tuple[int, int]]  # [start, end) of each step's tokens (step text + separator)
    # whose cached work this trajectory may reuse: the service's tenant (API key hash under `cache_scope: api-key`),
    # "" for the deployment. Engines that keep state between calls (the transformers PRM's KV prefix cache) and the
    # prefix sharing inside one batch never cross scopes: a tenant must not learn what another one sent
    scope: str = ""

    def prefix_len(self, n_steps: int) -> int:
        """Number of tokens through the end of step `n_steps` (0 steps = the prompt)."""
        return self.prompt_len if n_steps == 0 else self.step_spans[n_steps - 1][1]


class TrajectoryEncoder:
    """Tokenizes trajectories by the contract. Piece encodings are memoised (search trees repeat them a lot) in a
    memo bounded by bytes (`memo_bytes`); a trajectory over `token_limit` leaves nothing in it (issue 22.3: refused
    requests of long steps grew the service by 3.7 MB each)."""

    def __init__(self, tokenizer, template: PromptTemplate | None = None, sep: str = DEFAULT_SEP,
                 memo_bytes: int = 64 << 20):
        from repirl.bounded import ByteLRU

        if not sep:
            raise ValueError("step separator must be a non-empty string")
        self.tokenizer = tokenizer
        self.template = template or PromptTemplate()
        self.sep = sep
        self.memo = ByteLRU(memo_bytes)

    def _lookup(self, text: str, fresh: dict) -> tuple[int, ...]:
        ids = self.memo.get(text)
        if ids is None:
            ids = fresh.get(text)
        if ids is None:
            ids = fresh[text] = tuple(self.tokenizer.encode(text, add_special_tokens=False))
        return ids

    def _remember(self, fresh: dict) -> None:
        from repirl.bounded import ids_bytes, str_bytes

        for text, ids in fresh.items():
            self.memo.put(text, ids, str_bytes(text) + ids_bytes(len(ids)))

    def _encode(self, text: str) -> tuple[int, ...]:
        fresh: dict = {}
        ids = self._lookup(text, fresh)
        self._remember(fresh)
        return ids

    def prompt_ids(self, question: str) -> list[int]:
        return list(self._encode(self.template.render(question, self.tokenizer)))

    def step_ids(self, step: str) -> list[int]:
        return list(self._encode(step + self.sep))

    def encode(self, question: str, steps: Sequence[str], token_limit: int | None = None) -> TrajectoryIds:
        """The trajectory's ids. With `token_limit`, tokenizing stops at the first piece that takes the trajectory
        past it: that partial trajectory (fewer spans than steps; its length a lower bound) is returned for the
        caller to refuse, and none of its new pieces are memoised. A refused request costs at most the limit plus
        one piece of tokenizing, not all of its text (64 steps of 20,000 digits took 0.35 s to refuse)."""
        fresh: dict = {}
        ids = list(self._lookup(self.template.render(question, self.tokenizer), fresh))
        prompt_len = len(ids)
        spans = []
        for k, step in enumerate(steps):
            if token_limit is not None and len(ids) > token_limit:
                return TrajectoryIds(ids=ids, prompt_len=prompt_len, step_spans=spans)
            piece = self._lookup((self.template.first_step_prefix if k == 0 else "") + step + self.sep, fresh)
            spans.append((len(ids), len(ids) + len(piece)))
            ids.extend(piece)
        if token_limit is None or len(ids) <= token_limit:
            self._remember(fresh)
        return TrajectoryIds(ids=ids, prompt_len=prompt_len, step_spans=spans)
