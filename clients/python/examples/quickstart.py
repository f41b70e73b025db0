"""The SDK in one page: score steps, rerank candidates, stream a beam search, and read an error.

    REPIRL_BASE_URL=http://localhost:8000 REPIRL_API_KEY=KEY python quickstart.py
"""

import json

from repirl_client import Client, RequestTooLargeError

QUESTION = "Start with 9. Multiply by 4, then subtract 2. What is the result?"

with Client() as client:  # REPIRL_BASE_URL / REPIRL_API_KEY (or base_url=..., api_key=...)
    prm = client.models().prms[0]
    print(f"PRM {prm.id}: format {prm.format}, revision {prm.revision}, separator {prm.step_separator!r}")

    r = client.score(question=QUESTION, steps=["9*4=36", "36-2=34", "Answer: 34"])
    print("score:", [round(x, 4) for x in r.data[0].step_rewards], "->", round(r.data[0].score, 4),
          f"(request {r.request_id})")

    ranked = client.rerank(question=QUESTION, voting="majority",
                           candidates=["9*4=36\n\n36-2=34\n\nAnswer: 34", ["9*4=37", "37-2=35", "Answer: 35"],
                                       "9*4=36\n\n36-2=34\n\nAnswer: 34"])
    print("rerank:", ranked.ranking, "selected", ranked.selected.answer, "votes", ranked.selected.votes)

    with client.search(question=QUESTION, strategy="beam", n=8, beam_width=4, seed=0, stream=True) as stream:
        for event in stream:
            if event.type == "step":
                print(f"step {event.step}: kept {[' | '.join(b.steps) for b in event.beams]}, "
                      f"completed {[' | '.join(c.steps) for c in event.completed]}")
            else:
                res = event.result
                print("result:", json.dumps({"answer": res.answer, "steps": res.steps, "score": round(res.score, 4),
                                             "prm_tokens_computed": res.stats["prm_tokens_computed"]}))

    try:
        client.search(question=QUESTION, n=4096)
    except RequestTooLargeError as e:
        print(f"error {e.status_code} {e.type} param={e.param}: {e.error_message} (request {e.request_id})")
