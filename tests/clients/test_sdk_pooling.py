"""`Client.pooling` / `Client.classify` and their asyncio twins (vLLM's /pooling and /classify) against the real
service of tests/clients/conftest.py (a token-reward PRM "tr" on the transformers engine): typed results, every
input form vLLM takes, base64 rows, and refusals as the SDK's exception per status naming the field."""

from __future__ import annotations

import asyncio
import math

import pytest

from repirl_client import AsyncClient, BadRequestError, NotFoundError, UnprocessableEntityError
from repirl_client.types import ClassificationResponse, PoolingResponse
from tests.clients.conftest import API_KEY

TEXT = "Start with 3. Add 4, then double it.\n\n3+4=7\n\n7*2=14\n\nAnswer: 14\n\n"
OTHER = "Start with 3. Add 4, then double it.\n\n3+4=8\n\nAnswer: 16\n\n"
# a template of our own: the toy tokenizer's renders a policy prompt, this one the bare text (compared with `input`)
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def tokenizer(client):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(client.models().get("tr").root)


def test_pooling_token_rows_in_every_input_form(client, tokenizer):
    r = client.pooling(input=TEXT, model="tr")
    assert isinstance(r, PoolingResponse) and r.model == "tr" and r.object == "list" and r.request_id
    ids = tokenizer.encode(TEXT)
    rows = r.data[0].data
    # a token-reward PRM: one [value] row per token (vLLM's ALL pooler for token_classify)
    assert len(rows) == len(ids) == r.usage.prompt_tokens and all(len(row) == 1 for row in rows)
    values = [row[0] for row in rows]
    assert len({round(v, 4) for v in values}) > 3  # not a constant scorer
    by_ids = client.pooling(input=ids)
    assert by_ids.data[0].decode() == pytest.approx(values, abs=1e-5)
    batch = client.pooling(input=[TEXT, OTHER])
    assert [d.index for d in batch.data] == [0, 1] and batch.data[0].decode() == pytest.approx(values, abs=1e-5)
    assert batch.usage.prompt_tokens == len(ids) + len(tokenizer.encode(OTHER))
    again = client.pooling(input=(TEXT,))  # any sequence; the second time the step cache serves every step
    assert again.usage.tokens_computed == 0 and again.usage.cached_steps == 4
    active = client.pooling(input=TEXT, use_activation=True)
    assert [row[0] for row in active.data[0].data] == pytest.approx([_sigmoid(v) for v in values], abs=1e-5)
    b64 = client.pooling(input=[ids, ids], encoding_format="base64", embed_dtype="float32", endianness="big")
    assert isinstance(b64.data[1].data, str)
    assert b64.data[1].decode("float32", "big") == pytest.approx(values, abs=1e-6)
    assert r.data[0].decode() == values


def test_messages_take_the_chat_form(client):
    """vLLM's chat form: the messages rendered with `chat_template`, no special tokens added (its default)."""
    msgs = [{"role": "user", "content": TEXT}]
    chat = client.pooling(messages=msgs, chat_template=TEMPLATE)
    plain = client.pooling(input=TEXT, add_special_tokens=False)
    assert chat.data[0].decode() == pytest.approx(plain.data[0].decode(), abs=1e-6)
    cls = client.classify(messages=msgs, chat_template=TEMPLATE, use_activation=False)
    assert cls.data[0].probs == pytest.approx(client.classify(input=TEXT, add_special_tokens=False).data[0].probs)


def test_classify_is_the_prms_score(client):
    """probs `[s]`, s the PRM's score under its default aggregation (mean-token: the mean of the token rows), as
    /v1/score gives it; `model` may be the PRM's folder (veRL sends its config's model path)."""
    assert client.models().get("tr").default_aggregation == "mean-token"
    rows = client.pooling(input=[TEXT, OTHER]).data
    r = client.classify(input=[TEXT, OTHER], model=client.models().get("tr").root)
    assert isinstance(r, ClassificationResponse) and r.request_id and len(r.data) == 2
    for d, pooled in zip(r.data, rows):
        mean = sum(row[0] for row in pooled.data) / len(pooled.data)
        assert d.num_classes == 1 and d.label is None and d.probs == pytest.approx([mean], abs=1e-5)
    assert client.classify(input=TEXT, use_activation=True).data[0].probs == pytest.approx(
        [_sigmoid(r.data[0].probs[0])], abs=1e-6)
    via_task = client.pooling(input=TEXT, task="classify")
    assert via_task.data[0].data == pytest.approx(r.data[0].probs, abs=1e-6)


def test_refusals_are_typed_and_name_the_field(client):
    cases = [
        (lambda: client.pooling(input=TEXT, dimensions=4), BadRequestError, "dimensions"),
        (lambda: client.pooling(input=TEXT, truncate_prompt_tokens=8), BadRequestError, "truncate_prompt_tokens"),
        (lambda: client.pooling(input=TEXT, encoding_format="bytes"), BadRequestError, "encoding_format"),
        (lambda: client.pooling(input=[[1, 2, 10 ** 6]]), BadRequestError, "input"),
        (lambda: client.pooling(input=TEXT, task="embed"), BadRequestError, "task"),
        (lambda: client.classify(input=TEXT, model="nope"), NotFoundError, "model"),
        (lambda: client.classify(input=TEXT, extra_body={"use_activation": "maybe"}), UnprocessableEntityError,
         "use_activation"),
        (lambda: client.classify(messages=[{"role": "user", "content": "x"}], chat_template="{{ nope("),
         BadRequestError, "messages"),
    ]
    for call, cls, param in cases:
        with pytest.raises(cls) as e:
            call()
        assert e.value.param == param and e.value.request_id and e.value.error_message, (param, str(e.value))
    with pytest.raises(ValueError, match="exactly one of input"):  # vLLM's two request forms: one per call
        client.pooling(input=TEXT, messages=[{"role": "user", "content": TEXT}])
    with pytest.raises(ValueError):
        client.classify()


async def _async_pooling(url: str):
    async with AsyncClient(base_url=url, api_key=API_KEY) as c:
        pooled, classified = await asyncio.gather(c.pooling(input=[TEXT, OTHER], use_activation=False),
                                                  c.classify(input=TEXT))
        try:
            await c.pooling(input=TEXT, dimensions=2)
        except BadRequestError as e:
            error = e
    return pooled, classified, error


def test_async_pooling_and_classify(client, sdk_service):
    pooled, classified, error = asyncio.run(_async_pooling(sdk_service.url))
    assert isinstance(pooled, PoolingResponse) and isinstance(classified, ClassificationResponse)
    assert pooled.data[1].decode() == pytest.approx(client.pooling(input=OTHER).data[0].decode(), abs=1e-6)
    assert classified.data[0].probs == pytest.approx(client.classify(input=TEXT).data[0].probs, abs=1e-6)
    assert pooled.request_id and classified.request_id and pooled.request_id != classified.request_id
    assert error.status_code == 400 and error.param == "dimensions"
