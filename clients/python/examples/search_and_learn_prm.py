"""search-and-learn: a PRM object with `score(questions, outputs) -> list[list[list[float]]]` (per question, per
completion, per step), to use where `sal.models.reward_models.load_prm(config)` would be.

    REPIRL_BASE_URL=http://localhost:8000 REPIRL_API_KEY=KEY python search_and_learn_prm.py
"""

import json

from repirl_client.adapters.search_and_learn import RepirlPRM

prm = RepirlPRM()  # RepirlPRM(config, base_url=..., api_key=..., model=...)
questions = ["Start with 9. Multiply by 4, then subtract 2. What is the result?",
             "Start with 14. Multiply by 5, then subtract 6. What is the result?"]
outputs = [["9*4=36\n\n36-2=34\n\nAnswer: 34", "9*4=37\n\n37-2=35\n\nAnswer: 35"],
           ["14*5=70\n\n70-6=64\n\nAnswer: 64"]]
scores = prm.score(questions, outputs)
print(json.dumps([[[round(s, 4) for s in steps] for steps in per_q] for per_q in scores]))
print("last-step aggregate:", [[steps[-1] for steps in per_q] for per_q in scores])
