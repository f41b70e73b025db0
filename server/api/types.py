"""What every request schema of our own APIs shares: one check per concern, applied by type, so /v1/score, /v1/rerank,
/v1/search and /v1/best-of-n refuse the same things the same way (422 naming the field). OpenAI's chat schema stays
lenient where OpenAI's is (unknown fields, numbers as strings), but takes `Text` and `Seed` too."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from repirl.policy.base import SEED_LIMIT


def _valid_unicode(s: str) -> str:
    # JSON may carry a lone surrogate ("\ud800"); it is not text: tokenizers raised TypeError on it (a 500)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate)") from None
    return s


def _not_blank(s: str) -> str:
    if not s.strip():
        raise ValueError("must not be empty")
    return s


Text = Annotated[str, AfterValidator(_valid_unicode)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_valid_unicode), AfterValidator(_not_blank)]
# the range every policy engine takes (repirl.policy.base.SEED_LIMIT): beyond it vLLM's serializer overflowed
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]


class StrictModel(BaseModel):
    """Unknown fields are errors (a misspelt knob must not be silently ignored) and values are not coerced ("8" and
    true are not the integer n)."""

    model_config = ConfigDict(extra="forbid", strict=True)
