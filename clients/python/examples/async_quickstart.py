"""AsyncClient: the same methods, awaited; requests in flight together share one connection pool.

    REPIRL_BASE_URL=http://localhost:8000 REPIRL_API_KEY=KEY python async_quickstart.py
"""

import asyncio

from repirl_client import AsyncClient

QUESTIONS = ["Start with 2. Add 6, then add 14, then multiply by 5. What is the result?",
             "Start with 14. Multiply by 5, then subtract 6. What is the result?"]


async def main() -> None:
    async with AsyncClient() as client:
        results = await asyncio.gather(*(client.best_of_n(question=q, n=8, seed=i, select="weighted")
                                         for i, q in enumerate(QUESTIONS)))
        for q, r in zip(QUESTIONS, results):
            print(f"{q} -> {r.answer} ({len(r.candidates)} candidates, {r.stats['policy_tokens']} policy tokens)")
        stream = await client.search(question=QUESTIONS[0], strategy="dvts", n=8, beam_width=4, seed=0, stream=True)
        async for event in stream:
            if event.type == "step":
                print(f"step {event.step}: {len(event.beams)} beams kept, {len(event.completed)} completed")
            else:
                print("picked:", event.result.text.replace("\n\n", " | "), "score", round(event.result.score, 4))


asyncio.run(main())
