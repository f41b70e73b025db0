"""What every request schema of our own APIs shares: one check per concern, applied by type, so /v1/score, /v1/rerank,
/v1/search and /v1/best-of-n refuse the same things the same way (422 naming the field). OpenAI's chat schema stays
lenient where OpenAI's is (unknown fields, numbers as strings), but takes `Text` and `Seed` too."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

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
# the schema says "not blank" too (a pattern: one non-space character), so generated clients and schemathesis agree
NonEmptyText = Annotated[str, Field(min_length=1, json_schema_extra={"pattern": r"\S"}), AfterValidator(_valid_unicode),
                         AfterValidator(_not_blank)]
# the range every policy engine takes (repirl.policy.base.SEED_LIMIT): beyond it vLLM's serializer overflowed
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]


def _takes_int(annotation) -> bool:
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return int in members and float not in members


def integral_floats(model: type[BaseModel], data):
    """JSON has one number type: 8.0 is the integer 8 to JSON Schema (and to the schema we publish), so an int field
    takes it; "8", true and 8.5 stay errors."""
    if isinstance(data, dict):
        for name, field in model.model_fields.items():
            value = data.get(name)
            if type(value) is float and value.is_integer() and _takes_int(field.annotation):
                data = {**data, name: int(value)}
    return data


class StrictModel(BaseModel):
    """Unknown fields are errors (a misspelt knob must not be silently ignored) and values are not coerced ("8" and
    true are not the integer n; 8.0 is, see `integral_floats`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data):
        return integral_floats(cls, data)
