"""One line per measured ratio, for `make bench`'s table (load_tests/run_all.py collects the `BENCH_RESULT` lines
every bench_*.py prints; run alone, a script's own human-readable lines are unchanged)."""

from __future__ import annotations

import json

PREFIX = "BENCH_RESULT "


def emit(benchmark: str, compares: str, ratio: float, detail: str = "", target: str = "") -> None:
    """`ratio`: the first thing compared over the second, as a speed-up (or, for token counts, a plain ratio)."""
    print(PREFIX + json.dumps({"benchmark": benchmark, "compares": compares, "ratio": round(float(ratio), 3),
                               "detail": detail, "target": target}), flush=True)


def parse(line: str) -> dict | None:
    return json.loads(line[len(PREFIX):]) if line.startswith(PREFIX) else None
