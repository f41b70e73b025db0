"""A transformers PRM scorer with KV-cache reuse across a search tree.

Search (beam, best-of-N with shared prefixes) scores many trajectories that extend the same prefix. The model is
causal, so the keys/values and token values of a prefix never change when steps are appended. The scorer keeps
the KV cache of recently scored prefixes (at step boundaries) in an LRU bounded by tokens, finds the longest cached
prefix of each item and runs the model only on the tokens after it. Items that resume from the same prefix run as
one padded batch with that prefix's KV broadcast over the batch.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from repirl import cancel
from repirl.artifacts import ArtifactError, PRMConfig, check_model_folder, reference_dir, scoring_revision
from repirl.scoring.base import Item, StepScores
from repirl.scoring.formats import FormatSpec, Qwen2ForProcessRewardModel
from repirl.trajectory import TrajectoryEncoder, TrajectoryIds


@dataclass
class _Prefix:
    """What is cached for one prefix of `length` tokens: per model, its per-layer (K, V) and its last logits row."""

    length: int
    kv: list[list[tuple[torch.Tensor, torch.Tensor]]]
    last_logits: list[torch.Tensor]
    values: list[float]


class PrefixKVCache:
    """LRU of prefix KV states keyed by (scope, the prefix's token ids), bounded by cached tokens and by bytes.

    Bytes are counted as held (issue 22.3): the prefixes of one trajectory are views of one KV copy, and a view keeps
    its whole base tensor alive, so each distinct tensor storage counts once, for as long as any entry uses it; the
    logits rows are their own copies; the values and the key cost a Python float and int per token."""

    def __init__(self, max_tokens: int, max_bytes: int = 1 << 30):
        self.max_tokens = max_tokens
        self.max_bytes = max_bytes
        self.tokens = 0
        self.bytes = 0
        self._entries: OrderedDict[tuple, _Prefix] = OrderedDict()
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [entries using it, nbytes]

    @staticmethod
    def _held(entry: _Prefix) -> dict[int, int]:
        tensors = [t for layers in entry.kv for pair in layers for t in pair] + list(entry.last_logits)
        return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}

    @staticmethod
    def _python_bytes(entry: _Prefix) -> int:
        return 64 * entry.length + 200  # key ids and values: a slot and an object each

    def get(self, key: tuple) -> _Prefix | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple, entry: _Prefix) -> None:
        if self.max_tokens <= 0 or self.max_bytes <= 0 or entry.length > self.max_tokens:
            return
        held = self._held(entry)
        if sum(held.values()) + self._python_bytes(entry) > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = entry
        self.tokens += entry.length
        self.bytes += self._python_bytes(entry)
        for ptr, nbytes in held.items():
            use = self._storages.setdefault(ptr, [0, nbytes])
            if use[0] == 0:
                self.bytes += nbytes
            use[0] += 1
        while self.tokens > self.max_tokens or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.tokens -= entry.length
        self.bytes -= self._python_bytes(entry)
        for ptr in self._held(entry):
            use = self._storages[ptr]
            use[0] -= 1
            if use[0] == 0:
                self.bytes -= use[1]
                del self._storages[ptr]

    def clear(self) -> None:
        self._entries.clear()
        self._storages.clear()
        self.tokens = self.bytes = 0


def _load_models(prm_dir: Path, cfg: PRMConfig, dtype: torch.dtype) -> list[torch.nn.Module]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

    if cfg.format == "token-reward":
        return [AutoModelForTokenClassification.from_pretrained(prm_dir, dtype=dtype)]
    if cfg.format == "qwen-step-tag":
        return [Qwen2ForProcessRewardModel.from_pretrained(prm_dir, AutoConfig.from_pretrained(prm_dir)).to(dtype)]
    if cfg.format == "math-shepherd":
        return [AutoModelForCausalLM.from_pretrained(prm_dir, dtype=dtype)]
    return [AutoModelForCausalLM.from_pretrained(prm_dir, dtype=dtype),
            AutoModelForCausalLM.from_pretrained(reference_dir(prm_dir, cfg), dtype=dtype)]


class HFScorer:
    """StepScorer on transformers. Thread-safe (one forward at a time)."""

    engine = "hf"

    def __init__(self, prm_dir: str | Path, cfg: PRMConfig, name: str | None = None, *,
                 kv_cache_tokens: int = 65536, kv_cache_bytes: int = 1 << 30, max_batch_tokens: int = 16384, forward_tokens: int = 1024,
                 dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu"):
        from transformers import AutoTokenizer

        prm_dir = check_model_folder(prm_dir)
        self.prm_dir = prm_dir
        self.config = cfg
        self.name = name or prm_dir.name
        self.revision = scoring_revision(cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(prm_dir)
        self.encoder = TrajectoryEncoder(self.tokenizer, cfg.prompt_template, cfg.step_separator)
        self.spec = FormatSpec.resolve(cfg, self.tokenizer, str(prm_dir / "prm.json"))
        from repirl.devices import resolve_device, resolve_dtype

        self.device = resolve_device(device)
        dtype = resolve_dtype(dtype, self.device)
        try:
            self.models = [m.to(self.device).eval() for m in _load_models(prm_dir, cfg, dtype)]
        except ArtifactError:
            raise
        except Exception as e:  # transformers raises many types for a broken folder; name the path
            raise ArtifactError(f"{prm_dir}: cannot load the model: {e}") from e
        # the longest trajectory it scores: past the trained positions rewards are garbage (-2.7 where ~5.5 is normal)
        self.context_tokens = min(int(getattr(m.config, "max_position_embeddings", None) or 1 << 30)
                                  for m in self.models)
        self.kv = PrefixKVCache(kv_cache_tokens, kv_cache_bytes)
        # tokens per forward pass (padded rows x width). On CPU, per-item time is lowest around 500-1000 tokens per
        # forward and grows past that (activations fall out of cache): tiny PRM, 115-token items, 1 thread: 3.0 ms
        # per item in forwards of 8 items, 5.2 ms in forwards of 32 (load_tests/bench_scoring.py [3]).
        self.forward_tokens = max(1, min(max_batch_tokens, forward_tokens))
        self._lock = threading.Lock()

    def encode(self, question: str, steps: Sequence[str]) -> TrajectoryIds:
        return self.encoder.encode(question, steps)

    def score(self, items: Sequence[Item]) -> list[StepScores]:
        return self.score_encoded([self.encoder.encode(q, list(steps)) for q, steps in items])

    def score_encoded(self, trajs: Sequence[TrajectoryIds]) -> list[StepScores]:
        """`score` on trajectories already encoded by `self.encoder` (the service encodes once, for its cache)."""
        with self._lock, torch.inference_mode():
            return self._score_trajs(list(trajs), preemptible=True)

    # ---- internals -------------------------------------------------------------------------------------------
    @staticmethod
    def _key(traj: TrajectoryIds, end: int) -> tuple:
        """The KV cache's key of a prefix: its token ids within the trajectory's scope (tenant), so one tenant's
        cached or co-batched prefixes never save another's computation (nor show in its tokens_computed)."""
        return (traj.scope, *traj.ids[:end])

    def _longest_hit(self, traj: TrajectoryIds) -> tuple[tuple | None, _Prefix | None]:
        for k in range(len(traj.step_spans), -1, -1):
            key = self._key(traj, traj.prefix_len(k))
            entry = self.kv.get(key)
            if entry is not None:
                return key, entry
        return None, None

    def _prefill_shared_prefixes(self, trajs: list[TrajectoryIds]) -> dict[tuple, int]:
        """Items of one call that share a prefix (the prompt, or the prompt and some steps: best-of-N candidates,
        beam expansions) compute it once: the longest prefix shared by two or more items and not cached yet is
        scored first (recursively, so a tree of prefixes costs each node once), then the items resume from its KV.
        Returns prefix -> tokens computed."""
        counts: Counter[tuple] = Counter()
        for t in trajs:
            # k = 0 is the prompt (at step 1 of a search the candidates share only the prompt); the item's whole
            # length counts too, so an item that is a prefix of others (a prompt-only prefix in the recursion) is
            # computed once and the others resume from it
            for k in range(len(t.step_spans) + 1):
                counts[self._key(t, t.prefix_len(k))] += 1
        todo: dict[tuple, TrajectoryIds] = {}
        for t in trajs:
            for k in range(len(t.step_spans) - 1, -1, -1):  # proper prefixes, longest first
                end = t.prefix_len(k)
                key = self._key(t, end)
                if not end or self.kv.get(key) is not None:
                    break  # already as good as it gets for this item
                if counts[key] >= 2 and end <= self.kv.max_tokens:
                    todo.setdefault(key, TrajectoryIds(t.ids[:end], t.prompt_len, t.step_spans[:k], t.scope))
                    break
        if not todo:
            return {}
        scored = self._score_trajs(list(todo.values()))
        return {key: sc.tokens_computed for key, sc in zip(todo, scored)}

    def _score_trajs(self, trajs: list[TrajectoryIds], preemptible: bool = False) -> list[StepScores]:
        """`preemptible`: the call may hand back early between forwards (repirl/cancel.py `Preempted`, the items done
        so far; the shared-prefix prefill inside a call never does: its results are not the caller's items)."""
        prefilled = self._prefill_shared_prefixes(trajs) if self.kv.max_tokens > 0 and len(trajs) > 1 else {}
        results: list[StepScores | None] = [None] * len(trajs)
        groups: dict[tuple | None, list[int]] = {}  # None: no cached prefix (one group whatever the scope)
        hits: dict[tuple | None, _Prefix | None] = {}
        extra: dict[int, int] = {}
        for i, traj in enumerate(trajs):
            key, entry = self._longest_hit(traj)
            if entry is not None and entry.length == len(traj.ids):
                results[i] = self.spec.step_scores(traj, entry.values, tokens_computed=0)
                continue
            groups.setdefault(key, []).append(i)
            hits[key] = entry
            if key in prefilled:  # charge the shared prefix's tokens to its first user (usage stays honest)
                extra[i] = prefilled.pop(key)

        def charge_prefixes() -> None:
            for i, n in list(extra.items()):
                if results[i] is not None:
                    results[i].tokens_computed += extra.pop(i)

        # the caller's groups (the service's API keys, lightest first) run in their order, never in one forward
        order = cancel.preempt_groups() if preemptible else None
        caller = (lambda j: order[j]) if order else (lambda j: 0)
        forward_tokens = min(self.forward_tokens, (cancel.preempt_step_tokens() if preemptible else None)
                             or self.forward_tokens)
        forwards: list[tuple[int, list[int], _Prefix | None, int]] = []
        for key, members in groups.items():
            entry = hits[key]
            start = entry.length if entry else 0
            # bounded forwards: rows x padded width <= forward_tokens (at least one item)
            batch: list[int] = []
            for i in sorted(members, key=lambda j: (caller(j), len(trajs[j].ids))):
                if batch and (caller(i) != caller(batch[0])
                              or (len(batch) + 1) * (len(trajs[i].ids) - start) > forward_tokens):
                    forwards.append((caller(batch[0]), batch, entry, start))
                    batch = []
                batch.append(i)
            if batch:
                forwards.append((caller(batch[0]), batch, entry, start))
        forwards.sort(key=lambda f: f[0])  # stable: one group keeps the prefix groups' order
        last = None
        for group, rows, entry, start in forwards:
            # a safe point for the service's fair queue: another key's work waits and this call has had its time,
            # or one of the caller's groups is done and another's is next; the items done go back now (the KV of
            # every prefix computed stays cached), the rest is queued again
            if (preemptible and any(r is not None for r in results)
                    and ((last is not None and group != last) or cancel.preempt_requested())):
                charge_prefixes()
                raise cancel.Preempted(results)
            self._run_group([trajs[j] for j in rows], rows, entry, start, results)
            last = group
        charge_prefixes()
        return results  # type: ignore[return-value]

    def _run_group(self, trajs: list[TrajectoryIds], index: list[int], entry: _Prefix | None, start: int,
                   results: list) -> None:
        from transformers import DynamicCache

        # a safe point: when every request waiting for this call has gone (the service's micro-batcher says so),
        # the forwards still to run are skipped (repirl/cancel.py); the KV entries already remembered stay valid
        cancel.raise_if_stopped(f"PRM {self.name!r}")
        lengths = [len(t.ids) - start for t in trajs]
        width, b = max(lengths), len(trajs)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        new_mask = torch.zeros((b, width), dtype=torch.long)
        for r, t in enumerate(trajs):
            input_ids[r, : lengths[r]] = torch.tensor(t.ids[start:], dtype=torch.long)
            new_mask[r, : lengths[r]] = 1
        mask = torch.cat([torch.ones((b, start), dtype=torch.long), new_mask], dim=1).to(self.device)
        input_ids = input_ids.to(self.device)
        logits, caches = [], []
        for m_idx, model in enumerate(self.models):
            if entry is not None:
                past = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
                                                    for k, v in entry.kv[m_idx]])
            else:
                past = DynamicCache()
            out = model(input_ids=input_ids, attention_mask=mask, past_key_values=past, use_cache=True)
            logits.append(out.logits.float())
            caches.append([(layer.keys, layer.values) for layer in past.layers])  # updated in place
        new_values = self._token_values(logits, input_ids, entry, start)
        for r, (t, i) in enumerate(zip(trajs, index)):
            n = lengths[r]
            values = (entry.values if entry else []) + new_values[r, :n].tolist()
            results[i] = self.spec.step_scores(t, values, tokens_computed=n)
            self._remember(t, r, start, caches, logits, values)

    def _token_values(self, logits: list[torch.Tensor], input_ids: torch.Tensor, entry: _Prefix | None,
                      start: int) -> torch.Tensor:
        if not self.spec.needs_previous_logits:
            return self.spec.values_from_logits(logits[0])
        b = input_ids.shape[0]
        # logits that predict each new token: the cached prefix's last row, then the new positions but the last
        prev = []
        for m_idx, lg in enumerate(logits):
            first = entry.last_logits[m_idx].expand(b, 1, -1) if entry else torch.zeros_like(lg[:, :1])
            prev.append(torch.cat([first, lg[:, :-1]], dim=1))
        values = self.spec.implicit_values(prev[0], prev[1], input_ids)
        if entry is None:
            values[:, 0] = 0.0  # the first token has no context: no reward
        return values

    def _remember(self, traj: TrajectoryIds, row: int, start: int, caches, logits, values: list[float]) -> None:
        if self.kv.max_tokens <= 0:  # KV reuse off: don't copy what would be dropped
            return
        full = len(traj.ids)
        kv_rows = [[(k[row: row + 1, :, :full].clone(), v[row: row + 1, :, :full].clone()) for k, v in layers]
                   for layers in caches]
        for k in range(len(traj.step_spans) + 1):  # the prompt too: the next call's candidates all resume from it
            end = traj.prefix_len(k)
            if end <= start:
                continue
            kv = [[(kk[:, :, :end], vv[:, :, :end]) for kk, vv in layers] for layers in kv_rows]
            last = [lg[row, end - start - 1].clone() for lg in logits]
            self.kv.put(self._key(traj, end), _Prefix(end, kv, last, values[:end]))
