"""pydantic's validation errors in our words, in one place: which field (a dotted path) and what is wrong with it.

The service answers `{"param": "items.0.steps", "message": "items.0.steps: ..."}`; files and settings say
`field 'x': msg` (prm.json, task JSONL), `key 'x': msg` (training recipes), `setting 'x': msg` (`repirl serve`).
Each used to join pydantic's `loc` on its own; they differed on which error of several to report and on pydantic's
union-member names ("candidates.2.function-after[...]") leaking into the field.
"""

from __future__ import annotations

import re
from typing import Iterable

from pydantic import ValidationError

# pydantic puts the union member that failed into an error's loc ("candidates.2.function-after[...]",
# "messages.0.content.list[ContentPart]"); our field names are snake_case, so these are easy to drop
_UNION_MEMBER = re.compile(r"^[A-Z]|[\[\-]|^(str|int|float|bool|list|dict|none)$")


def main_error(errors: ValidationError | Iterable[dict]) -> dict:
    """The most specific error: the deepest (a union reports one error per member; the member that matched the
    input's shape goes deepest), the first of equals."""
    errs = errors.errors() if isinstance(errors, ValidationError) else list(errors)
    return max(errs, key=lambda e: len(e.get("loc", ())))


def field_path(error: dict, skip: Iterable[str] = ()) -> str:
    """The error's field as a dotted path ("items.0.steps"), without union members and the `skip` roots."""
    skip = set(skip)
    return ".".join(str(x) for x in error.get("loc", ()) if x not in skip and not _UNION_MEMBER.search(str(x)))


def error_message(error: dict, noun: str = "field") -> str:
    """pydantic's message without its "Value error, " prefix; an unknown key says so in the caller's noun."""
    if error.get("type") == "extra_forbidden":
        return f"unknown {noun} (not part of the schema; check the spelling)"
    return str(error.get("msg", "")).removeprefix("Value error, ")


def describe(errors: ValidationError | Iterable[dict], noun: str = "field", top: str = "(top level)") -> str:
    """`{noun} 'a.b': message` for the most specific error (`top` when the error is about the whole object)."""
    err = main_error(errors)
    return f"{noun} '{field_path(err) or top}': {error_message(err, noun)}"
