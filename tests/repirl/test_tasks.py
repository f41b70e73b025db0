import json
import random

import pytest

from repirl.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from repirl.tasks.gsm8k import GSM8KTask, load_gsm8k, load_model_solutions, safe_eval, step_note_ok
from repirl.tasks.jsonl import DataError, load_problems, read_records
from tests.conftest import GSM8K_DIR


def test_arithmetic_is_seeded_and_reference_solutions_check_clean():
    task = ArithmeticTask(ArithmeticConfig(min_ops=2, max_ops=4, max_operand=50, max_multiplier=9))
    a, b = task.sample(200, seed=7), task.sample(200, seed=7)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in task.sample(200, seed=8)] != [p.question for p in a]
    for p in a:
        check = task.check(p, p.steps)
        assert check.correct and check.first_wrong_step is None
        assert 3 <= len(p.steps) <= 5 and p.steps[-1] == f"Answer: {p.answer}"
        assert int(p.answer) >= 0


def test_difficulty_knobs_change_the_problems():
    easy = ArithmeticTask(ArithmeticConfig(min_ops=1, max_ops=1, ops="+", max_operand=9)).sample(50, seed=0)
    hard = ArithmeticTask(ArithmeticConfig(min_ops=5, max_ops=5, max_operand=99)).sample(50, seed=0)
    assert all(len(p.steps) == 2 and "+" in p.steps[0] for p in easy)
    assert all(len(p.steps) == 6 for p in hard)
    with pytest.raises(ValueError):
        ArithmeticConfig(min_ops=3, max_ops=2)
    with pytest.raises(ValueError):
        ArithmeticConfig(ops="+/")


def test_step_checker_finds_the_first_wrong_step():
    task = ArithmeticTask()
    p = task.problem(random.Random(0), "p")
    steps = list(p.steps)
    n_eq = len(steps) - 1
    for k in range(n_eq):
        bad = list(steps)
        a, rest = bad[k].split("=")
        bad[k] = f"{a}={int(rest) + 1}"  # arithmetic slip at step k
        assert task.check(p, bad).first_wrong_step == k
        assert task.check(p, bad).correct  # later steps and answer untouched: right outcome, wrong process
    start = str(p.meta["start"])
    assert steps[0].startswith(start)
    copied_wrong = ["999" + steps[0][len(start):]] + steps[1:]
    assert task.check(p, copied_wrong).first_wrong_step == 0  # wrong number copied from the question
    assert task.check(p, steps[:-1]).first_wrong_step == n_eq  # missing answer step
    assert task.check(p, steps[:1]).first_wrong_step == 1  # truncated
    assert task.check(p, steps + ["extra"]).first_wrong_step == n_eq + 1
    assert task.check(p, []).first_wrong_step == 0 and not task.check(p, []).correct
    lucky = ["0+0=0"] * n_eq + [steps[-1]]  # right answer, wrong process
    check = task.check(p, lucky)
    assert check.correct and check.first_wrong_step == 0


def test_gsm8k_loader_and_calculator_notes():
    problems = load_gsm8k("train", GSM8K_DIR)
    assert len(problems) == 7473
    assert problems[0].answer == "72" and problems[0].steps[-1] == "#### 72"
    assert safe_eval("48/2") == 24 and safe_eval("2*(3+4)") == 14
    with pytest.raises(ValueError):
        safe_eval("__import__('os')")
    assert step_note_ok("so 48/2 = <<48/2=24>>24") is True
    assert step_note_ok("so 48/2 = <<48/2=25>>25") is False
    assert step_note_ok("no note") is None
    task = GSM8KTask()
    wrong_notes = sum(task.check(p, p.steps).first_wrong_step is not None for p in problems)
    assert all(task.check(p, p.steps).correct for p in problems[:500])
    assert wrong_notes < 0.02 * len(problems)  # references are almost all arithmetically right
    bad = list(problems[0].steps)
    bad[0] = bad[0].replace("<<48/2=24>>", "<<48/2=23>>")
    assert task.check(problems[0], bad).first_wrong_step == 0


def test_model_solutions_have_four_labelled_candidates():
    rows = load_model_solutions(GSM8K_DIR)
    assert len(rows) == 800 and all(len(c) == 4 for _, c in rows)
    task = GSM8KTask()
    agree = sum(task.check(p, c.steps).correct == c.is_correct for p, cands in rows for c in cands)
    assert agree / (800 * 4) > 0.97  # our extraction + equivalence reproduces the published labels


def test_user_jsonl_format(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in [
        {"question": "q1", "steps": ["1+1=2", "Answer: 2"]},
        {"question": "q2", "solution": "2+2=4\n\nAnswer: 4", "answer": "4",
         "candidates": [{"solution": "Answer: 5", "correct": False, "logprob": -3.5}]},
    ]) + "\n\n")
    problems = load_problems(good)
    assert [p.answer for p in problems] == ["2", "4"]
    assert problems[1].steps == ["2+2=4", "Answer: 4"]
    assert list(read_records(good))[1][1].candidates[0].logprob == -3.5

    cases = {
        '{"question": "q", "steps": "not a list"}': "field 'steps'",
        '{"question": "q"}': "field '(record)'",
        '{"question": "q", "steps": ["a"], "candidates": [{"steps": ["x"]}]}': "field 'candidates.0.correct'",
        '{"question": "q", "stepz": ["a"]}': "field 'stepz'",
        '{"question": ': "invalid JSON",
        '[1, 2]': "expected a JSON object",
    }
    for line, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"question": "ok", "steps": ["Answer: 1"]}\n' + line + "\n")
        with pytest.raises(DataError) as err:
            load_problems(bad)
        assert str(err.value).startswith(f"{bad}:2: ") and message in str(err.value), str(err.value)
    with pytest.raises(DataError, match="cannot open"):
        load_problems(tmp_path / "missing.jsonl")
