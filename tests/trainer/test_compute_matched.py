"""The multi-seed compute-matched search section: merging `repirl eval` results, the verdicts, the rendered report."""

from __future__ import annotations

import json

import pytest

from trainer.evaluation import compute_matched


def _row(acc, tokens, problems=20):
    return {"accuracy": acc, "problems": problems, "policy_tokens_per_problem": tokens,
            "prm_tokens_computed_per_problem": tokens / 2}


def _results(tmp_path, seed, pf_acc):
    rows = {"best-of-8 (PRM-weighted vote)": _row(0.40, 230), "beam (n=8, width=4)": _row(0.45, 228),
            "particle filtering (n=8)": _row(pf_acc, 229),
            "particle filtering (n=8, resample every step, T=0.05)": _row(0.9, 229)}
    search = {"problems": 20, "n": 8, "temperature": 0.8, "seed": seed,
              "prms": {"A, in-distribution": rows, "B, in-distribution": rows, "A, harder": rows}}
    p = tmp_path / f"s{seed}.json"
    p.write_text(json.dumps({"search": search}))
    return str(p)


def test_merge_pools_the_seeds_and_judges_particle_filtering(tmp_path):
    d = compute_matched.merge([_results(tmp_path, 0, 0.50), _results(tmp_path, 1, 0.40)], ["cmd0", "cmd1"])
    assert d["seeds"] == [0, 1] and d["prms"] == ["A", "B"] and list(d["tasks"]) == ["in-distribution", "harder"]
    pf = d["tasks"]["in-distribution"]["particle filtering (n=8)"]["A"]
    assert pf["accuracy"] == pytest.approx(0.45) and pf["problem_seeds"] == 40 and pf["seed_accuracy"] == [0.5, 0.4]
    assert pf["se"] == pytest.approx((0.45 * 0.55 / 40) ** 0.5)
    lines = compute_matched.verdicts(d)
    # 0.45 = beam's 0.45 and above weighted best-of-N's 0.40: met; the resample-every-step row is not the target
    assert lines[0].startswith("- in-distribution, A: particle filtering (n=8) 0.450") and "**met**" in lines[0]
    d2 = compute_matched.merge([_results(tmp_path, 0, 0.30)], ["cmd0"])
    assert "**missed**" in compute_matched.verdicts(d2)[0] and "-15.0 points" in compute_matched.verdicts(d2)[0]


def test_the_report_renders_the_section_from_search_seeds_json(tmp_path):
    from trainer.evaluation.report import render

    plot_dir = tmp_path / "results"
    plot_dir.mkdir()
    data = compute_matched.merge([_results(tmp_path, 0, 0.5)], ["repirl eval --seed 0"])
    (plot_dir / "search_seeds.json").write_text(json.dumps(data))
    text = render({"config": {}, "runs": []}, tmp_path / "results.md", plot_dir, [])
    assert "## 5b. Compute-matched" in text and "    repirl eval --seed 0" in text
    assert "| particle filtering (n=8) | 229 / 229 | 0.500 ± 0.112 (0.50-0.50) |" in text
