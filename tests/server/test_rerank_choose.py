"""/v1/rerank and search pick with the one `choose()` (repirl/search/core.py): for the same scores and answers they
choose the same candidate. Rerank's own `_select` used to differ: it let an unanswered candidate win and had no vote
temperature; the cases below are the ones where it did."""

from __future__ import annotations

import pytest

from repirl.search import Candidate, choose, votes
from server.api.rerank.protocol import RerankRequest, RerankResult
from server.api.rerank.serving import VOTING_TO_SELECT, _select

CASES = [
    # (answers, scores, voting, vote_temperature, probability scores)
    ([None, "5", "6"], [3.0, 1.0, 0.5], "none", 1.0, False),  # best score states no answer: an answer wins
    (["1", "2", "2"], [2.0, 1.5, 1.5], "weighted", 0.1, False),  # a cold vote follows the top score ("1")
    (["1", "2", "2"], [2.0, 1.5, 1.5], "weighted", 1.0, False),  # a warm one the two agreeing answers ("2")
    (["1", "2", "2"], [0.9, 0.4, 0.3], "weighted", 1.0, True),  # probabilities vote with the score: 0.9 beats 0.7
    ([None, None], [1.0, 2.0], "majority", 1.0, False),  # nobody answers: the best score, no answer
    (["7", "8", "8"], [5.0, 1.0, 0.0], "majority", 1.0, False),
]


def _search_pick(answers, scores, voting, temperature, probability):
    # search hands choose() its completed candidates ranked (repirl.search.core.rank): the same order as rerank's
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    cands = [Candidate(steps=["s"], score=scores[i], answer=answers[i], id=i) for i in ranked]
    best, answer = choose(cands, VOTING_TO_SELECT[voting], temperature, probability)
    return best.id, answer


@pytest.mark.parametrize("answers,scores,voting,temperature,probability", CASES)
def test_rerank_and_search_choose_alike(answers, scores, voting, temperature, probability):
    ranked = sorted((RerankResult(index=i, score=s, answer=a, step_rewards=[s])
                     for i, (a, s) in enumerate(zip(answers, scores))), key=lambda r: (-r.score, r.index))
    req = RerankRequest(question="q", candidates=["x"], voting=voting, vote_temperature=temperature)
    selected = _select(req, ranked, probability)
    assert (selected.index, selected.answer) == _search_pick(answers, scores, voting, temperature, probability)


def test_the_cases_exercise_the_old_differences():
    """Guards the table above: rerank's old rules (an unanswered best wins "none"; temperature 1 only) pick
    otherwise in the first two cases, so the test above fails on the old `_select`."""
    assert _search_pick(*CASES[0]) == (1, "5")  # the old rerank chose index 0 (no answer)
    assert _search_pick(*CASES[1])[1] == "1" and _search_pick(*CASES[2])[1] == "2"  # temperature matters
    cands = [Candidate(steps=["s"], score=s, answer=a) for a, s in zip(["1", "2", "2"], [0.9, 0.4, 0.3])]
    assert votes(cands, "weighted", probability_scores=True) == pytest.approx({"1": 0.9, "2": 0.7})
