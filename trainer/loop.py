"""The training loop: one loop for rePIRL, RLOO, PRIME and TTT (offline PRM learning lives in trainer/offline.py).

Per iteration: draw questions (seeded by (seed, iteration), so a resumed run draws the same ones), sample n rollouts
each, score outcomes, let the algorithm (trainer/harness.py) update its PRM and turn the batch into advantages,
update the policy (PPO-clip over mini-batches), log one metrics row, checkpoint every k iterations. The loop never
asks which algorithm it runs.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import torch
import yaml

from repirl.artifacts import PolicyConfig, Provenance, atomic_write_text, save_model_folder
from trainer import checkpoint
from trainer import distributed as dist
from trainer.algorithms import batch_of, kl_to_init, policy_step
from trainer.config import TrainConfig, default_mini_batch_size
from trainer.data import EVAL_SAMPLE_SEED, make_task_and_pools
from trainer.device import compute_for, place, reference_dtype, resolve_device
from trainer.harness import Models, RolloutBatch, initial_policy_dir, kept_rows, load_tokens, make_algorithm
from trainer.metrics import append_row, plot, read_rows, truncate_rows
from trainer.models import load_causal_lm, token_logprobs
from trainer.rollouts import HFEngine, VLLMEngine, build_rollouts, choose_engine
from trainer.schedule import restore, warmup_scheduler
from trainer.summary import RunSummary


class ResumeError(RuntimeError):
    pass


def _config_differences(saved: Path, cfg: TrainConfig) -> list[str]:
    """Dotted keys in which the run's config.yaml and `cfg` differ. config.yaml goes through the schema first, so a
    key added since the run started (at its default, which keeps the old behaviour: optim.warmup_steps 0) is no
    difference; a config.yaml the schema no longer accepts is one ("config.yaml")."""
    from trainer.config import ConfigError, parse_config

    try:
        old = parse_config(yaml.safe_load(saved.read_text()) or {}, str(saved)).model_dump(mode="json")
    except ConfigError:
        return ["config.yaml (no longer a valid recipe)"]
    new = cfg.model_dump(mode="json")

    def walk(a, b, prefix=""):
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in walk(a.get(k), b.get(k), f"{prefix}{k}.")]
        return [] if a == b else [prefix.rstrip(".")]

    return walk(old, new)


def iteration_seed(seed: int, it: int) -> int:
    return (seed * 1_000_003 + it * 7919) % (2**31 - 1)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, console=None):
        self.device = resolve_device(cfg.device)  # auto: this rank's GPU if torch sees one, else the CPU
        dist.setup(self.device.type)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.console = cfg, console
        self.run_dir = cfg.run_dir
        self.is_main = dist.rank() == 0
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if cfg.optim.mini_batch_size is None:  # several PPO steps per batch unless the recipe says otherwise; before
            # config.yaml is written, so the run records (and a resume compares) the size it ran with
            cfg.optim.mini_batch_size = default_mini_batch_size(cfg.questions_per_iter, dist.world())
        self._prepare_run_dir(resume)
        self.algo = make_algorithm(cfg)  # rePIRL, RLOO, PRIME, TTT: trainer/harness.py
        self.init_dir = initial_policy_dir(cfg, self.run_dir)
        self.tokens = load_tokens(self.init_dir, cfg.prompt_template)  # the recipe's template wins over policy.json
        self.tokenizer, self.encoder, self.policy_cfg = self.tokens.tokenizer, self.tokens.encoder, self.tokens.policy_cfg
        self.eos_id, self.pad_id = self.tokens.eos_id, self.tokens.pad_id
        self.task, train_pool, self.heldout = make_task_and_pools(cfg)
        self.train_pool = self.algo.training_pool(train_pool, self.heldout)
        if min(cfg.questions_per_iter, len(self.train_pool)) % dist.world():
            # sharded models all-gather weights inside every forward, so every rank must run the same forwards
            # (generate batches, PRM and policy steps): equal question shards guarantee that
            raise ValueError(f"questions_per_iter ({cfg.questions_per_iter}) must be a multiple of the number of "
                             f"processes ({dist.world()})")
        if cfg.optim.mini_batch_size % dist.world():
            raise ValueError(f"optim.mini_batch_size ({cfg.optim.mini_batch_size}) must be a multiple of the number "
                             f"of processes ({dist.world()})")
        torch.manual_seed(cfg.seed)
        # Models go to the device (trainer/device.py place); WORLD_SIZE > 1: the trainable ones are sharded with FSDP2
        # before the optimizers are built (fully_shard replaces the parameters); one process: nothing is wrapped. The
        # frozen initial policy stays a full replica (forward only, no gradients to reduce), in the policy's compute
        # dtype. Every forward reads its Compute (device, bf16 autocast, micro-batches, log-prob chunks).
        compute = compute_for(cfg, self.device, dist.world())
        self.policy = place(load_causal_lm(self.init_dir).train(), cfg, compute, trainable=True)
        self.init_policy = place(load_causal_lm(self.init_dir, reference_dtype(cfg, dist.world())).eval()
                                 .requires_grad_(False), cfg, compute, trainable=False)
        self.prm = self.algo.build_prm(self.init_dir)
        if self.prm is not None:  # the HF module: FSDP's root hooks run on its forward (token_rewards calls it)
            place(self.prm.model, cfg, compute, trainable=True)
            self.prm.remember_start(cfg.prm.init_l2)  # phi_0 of prm.init_l2: the start, before a resume loads weights
        # one process on a GPU: torch's fused AdamW (one kernel for all parameters instead of a few per tensor group)
        fused = {"fused": True} if (self.device.type == "cuda" and dist.world() == 1) else {}
        self.opt_policy = torch.optim.AdamW(self.policy.parameters(), lr=cfg.optim.lr, weight_decay=0.0, **fused)
        self.sched_policy = warmup_scheduler(self.opt_policy, cfg.optim.warmup_steps)  # linear warm-up, then optim.lr
        self.opt_prm = (torch.optim.AdamW(self.prm.parameters(), lr=cfg.prm.lr, weight_decay=0.0, **fused)
                        if self.prm is not None else None)
        self.start_iter = self._load_checkpoint() if resume else 0
        self.engine = None

    # ------------------------------------------------------------------------------------------------------ set-up
    def _prepare_run_dir(self, resume: bool) -> None:
        cfg_text = yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False)
        saved = self.run_dir / "config.yaml"
        if resume:
            if not saved.exists():
                raise ResumeError(f"--resume: {saved} not found (nothing to resume in {self.run_dir})")
            differ = _config_differences(saved, self.cfg)
            if differ:
                raise ResumeError(f"--resume: the config differs from {saved} in {', '.join(differ)}; resume with "
                                  f"the run's own config (repirl train --config {saved} --resume)")
            return
        if self.is_main:
            for stale in ("metrics.jsonl", "checkpoints", "plots", "summary.json"):
                p = self.run_dir / stale
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            atomic_write_text(saved, cfg_text)

    def _make_engine(self):
        c = self.cfg.rollouts
        engine, note = choose_engine(c.engine, dist.world(), self.device.type)  # vLLM imported only when used
        if note and self.is_main:
            self._say(note)
        if engine != "vllm":
            # one process on a GPU in bf16: sample from a bf16 replica (trainer/rollouts.py HFEngine, issue 26)
            replica = (torch.bfloat16 if self.device.type == "cuda" and self.cfg.dtype == "bfloat16"
                       and dist.world() == 1 else None)
            return HFEngine(self.policy, self.tokens.stop_ids, self.pad_id, replica_dtype=replica)
        live = self._save_live_policy()
        if self.is_main:
            self.tokenizer.save_pretrained(live)
        dist.barrier()
        # several processes: one engine per rank, in the rank's process (VLLMEngine `per_rank`)
        return VLLMEngine(live, self.cfg.seed, c.max_model_len, c.kv_cache_gib, eos_ids=self.tokens.stop_ids,
                          dtype=self.cfg.dtype, sleep_level=c.sleep_level, in_process=c.engine_in_process,
                          per_rank=dist.world() > 1)

    def _save_live_policy(self) -> Path:
        """The policy's current weights for the vLLM engine(s). Sharded: every rank gathers, rank 0 writes, all wait."""
        live = self.run_dir / "live_policy"
        policy = dist.saveable(self.policy)
        if self.is_main:
            policy.save_pretrained(live)
        dist.barrier()
        return live

    def _sync_engine(self) -> dict:
        """The new weights into the vLLM engine(s); the row's `t_sync` (seconds, this rank's push or reload)."""
        if isinstance(self.engine, VLLMEngine):
            # in memory (trainer/weight_sync.py; sharded: every rank gathers the full weights for its own engine), or
            # with `weight_sync: disk` saved (gathered) and re-read by every engine
            memory = self.cfg.rollouts.weight_sync == "memory"
            self.engine.sync(self.policy if memory else self._save_live_policy())
            return {"t_sync": round(self.engine.last_sync.get("seconds", 0.0), 4)}
        return {}

    # --------------------------------------------------------------------------------------------------- the loop
    def run(self, progress: bool = True) -> dict:
        cfg = self.cfg
        self.engine = self._make_engine()
        # the held-out accuracy of the starting policy, the "before" of the final summary (kept across a resume)
        before_path = self.run_dir / "eval_before.json"
        if cfg.eval_problems and not before_path.exists():
            acc, greedy = self.evaluate(), self.evaluate(temperature=0.0)
            if self.is_main:
                atomic_write_text(before_path, json.dumps({"eval_accuracy": acc, "eval_accuracy_greedy": greedy}))
        before = json.loads(before_path.read_text()) if before_path.exists() else {}
        # a run resumed from before greedy evaluation existed has no greedy "before": None, not a guess
        self.eval_before, self.eval_greedy_before = before.get("eval_accuracy"), before.get("eval_accuracy_greedy")
        bar = _progress(self.console) if (progress and self.is_main) else None
        if bar is not None:
            bar.start()
            job = bar.add_task(cfg.name, total=cfg.iterations, completed=self.start_iter, acc="-")
        try:
            for it in range(self.start_iter, cfg.iterations):
                row = self.iteration(it)
                if cfg.eval_every and (it + 1) % cfg.eval_every == 0:
                    row["eval_accuracy"] = self.evaluate()
                if self.is_main:
                    append_row(self.metrics_path, row)
                if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
                    self.save_checkpoint(it + 1)
                if bar is not None:
                    bar.update(job, completed=it + 1, acc=f"{row['accuracy']:.2f}")
                elif self.is_main:  # no bar (logs, CI): one line per iteration
                    self._say(iteration_line(row, cfg.iterations))
        finally:
            if bar is not None:
                bar.stop()
        return self.finish()

    def iteration(self, it: int) -> dict:
        cfg, t0 = self.cfg, time.time()
        seed = iteration_seed(cfg.seed, it)
        torch.manual_seed(seed)
        picked = random.Random(seed).sample(range(len(self.train_pool)), min(cfg.questions_per_iter, len(self.train_pool)))
        mine = dist.shard(list(enumerate(picked)))
        problems = [self.train_pool[i] for _, i in mine]
        n = cfg.rollouts.n
        gens = self.engine.generate([self.encoder.prompt_ids(p.question) for p in problems], n,
                                    cfg.rollouts.temperature, cfg.rollouts.top_p, cfg.rollouts.max_new_tokens, seed)
        rollouts = build_rollouts(problems, gens, self.encoder, self.tokenizer, self.task, self.tokens.stop_ids)
        for r in rollouts:
            r.group = mine[r.group][0]
        t_roll = time.time() - t0

        batch = batch_of(rollouts, self.pad_id)
        temp = cfg.rollouts.temperature  # every policy log-prob at the temperature the rollouts were sampled at
        with torch.no_grad():
            old_lp = token_logprobs(self.policy, batch, temperature=temp)
        correct = torch.tensor([float(r.correct) for r in rollouts])
        n_global = dist.all_sum(len(rollouts))
        row = {"iter": it, "accuracy": dist.all_sum(float(correct.sum())) / max(n_global, 1),
               "engine": self.engine.name, "mean_len": float(batch.resp_mask.sum(-1).mean())}
        if cfg.kl_to_init:  # a metric only: one more no-grad forward of the frozen reference over the whole batch
            with torch.no_grad():
                row["kl_init"] = kl_to_init(old_lp, token_logprobs(self.init_policy, batch, temperature=temp),
                                            batch.resp_mask)
        row["logprob_max_abs_diff"] = dist.all_max(_logprob_check(self.policy, rollouts, self.pad_id, temp))
        # what stale engine weights would show; from iteration 1 on (not `it > start_iter`: a resumed run must log the
        # same row as an uninterrupted one)
        if row["logprob_max_abs_diff"] is not None and it > 0:
            row["logprob_diff_if_stale"] = dist.all_max(_logprob_check(self.init_policy, rollouts, self.pad_id, temp))

        # the PRM update and the policy's rewards/advantages: whatever the algorithm does (trainer/harness.py)
        t1 = time.time()
        keep = kept_rows(rollouts, n, cfg.filters)  # the filters choose the policy update's questions
        scored = self.algo.score(RolloutBatch(rollouts, batch, old_lp, correct, keep, n),
                                 Models(self.prm, self.opt_prm, self.init_policy, self.tokens))
        row.update(scored.metrics)
        t_prm = time.time() - t1
        row["kept_groups"] = int(dist.all_sum(float(keep.sum()) / n))
        row["reward_mean"] = dist.all_sum(float(scored.rewards.sum())) / max(n_global, 1)

        # the policy update: PPO-clip over mini-batches of the kept questions (the filtered ones leave the batch
        # before it is split; epochs after the first reshuffle it, seeded by the iteration)
        t2 = time.time()
        if cfg.optim.update:
            stepped = policy_step(self.policy, self.opt_policy, batch, old_lp, scored.advantages, cfg.optim, n, temp,
                                  keep=keep, seed=seed, sched=self.sched_policy)
            row.update(stepped)
            if stepped:
                row.update(self._sync_engine())
        row.update(t_rollout=round(t_roll, 3), t_prm=round(t_prm, 3), t_policy=round(time.time() - t2, 3),
                   t_iter=round(time.time() - t0, 3))
        return row

    # ------------------------------------------------------------------------------------------ eval, checkpoints
    def evaluate(self, temperature: float | None = None) -> float:
        """Held-out accuracy, one solution per problem: at the rollout temperature (None), or greedy pass@1 (0.0,
        what the paper reports)."""
        c, probs = self.cfg, self.heldout[: self.cfg.eval_problems]
        temperature = c.rollouts.temperature if temperature is None else temperature
        if not probs:
            return float("nan")
        # one engine per rank: each samples its share of the problems (a sharded transformers policy cannot: its
        # forwards are collective, so every rank generates them all)
        mine = dist.shard(probs) if getattr(self.engine, "per_rank", False) else probs
        gens = self.engine.generate([self.encoder.prompt_ids(p.question) for p in mine], 1, temperature,
                                    c.rollouts.top_p, c.rollouts.max_new_tokens, seed=EVAL_SAMPLE_SEED + c.seed)
        rs = build_rollouts(mine, gens, self.encoder, self.tokenizer, self.task, self.tokens.stop_ids)
        correct = sum(r.correct for r in rs)
        return (dist.all_sum(correct) if mine is not probs else correct) / len(probs)

    def _parts(self) -> dict:
        return {"policy": (self.policy, self.opt_policy), "prm": (self.prm, self.opt_prm)}

    def save_checkpoint(self, iteration: int) -> None:
        # torch distributed checkpoint (trainer/checkpoint.py): each rank writes its own shards, nothing is gathered
        checkpoint.save(self.run_dir, iteration, self._parts(), lr_steps={"policy": self.sched_policy.last_epoch})

    def _load_checkpoint(self) -> int:
        last = checkpoint.latest(self.run_dir)
        if last is None:
            if self.is_main:  # killed before the first checkpoint: start over, cleanly
                truncate_rows(self.metrics_path, 0)
            return 0
        try:  # any number of processes: DCP reshards
            iteration = checkpoint.load(last, self._parts())
        except checkpoint.CheckpointError as e:
            raise ResumeError(f"--resume: {e}") from None
        steps = (checkpoint.lr_steps(last) or {}).get("policy")
        if steps is not None:
            restore(self.sched_policy, steps)
        elif self.cfg.optim.warmup_steps:  # cannot happen for a run started with a warm-up; a hand-edited config can
            raise ResumeError(f"--resume: {last} does not record the optimizer steps taken (written before the lr "
                              f"warm-up existed), so optim.warmup_steps {self.cfg.optim.warmup_steps} cannot resume "
                              "from it: resume with the run's own config.yaml (no warm-up) or start the run again")
        if self.is_main:
            truncate_rows(self.metrics_path, iteration)
        return iteration

    def finish(self) -> dict:
        cfg = self.cfg
        eval_acc = self.evaluate() if cfg.eval_problems else None
        eval_greedy = self.evaluate(temperature=0.0) if cfg.eval_problems else None
        # FULL weights: sharded models are gathered here, on every rank (rank 0 gets them); unsharded: the models
        policy = dist.saveable(self.policy)
        prm_model = dist.saveable(self.prm.model) if self.prm is not None else None
        if not self.is_main:
            return {}
        rows = read_rows(self.metrics_path)
        prov = Provenance(algorithm=cfg.algorithm, base_model=str(self.init_dir), data=f"{cfg.task.name} seed {cfg.seed}",
                          iterations=cfg.iterations, metrics={"eval_accuracy": eval_acc})
        pol_cfg = PolicyConfig(step_separator=self.policy_cfg.step_separator,
                               prompt_template=self.policy_cfg.prompt_template, task=self.policy_cfg.task, provenance=prov)
        save_model_folder(policy, self.tokenizer, self.run_dir / "policy", policy_config=pol_cfg)
        if self.prm is not None:
            self.algo.export(self.prm, prm_model, self.run_dir / "prm", self.tokens, pol_cfg, prov,
                             reference=self.init_policy)
        plot(rows, self.run_dir / "plots")
        if self.prm is not None:  # p_correct for the service: prm.json `calibration` (trainer/calibration.py)
            from trainer.calibration import calibrate_prm_folder

            calibrate_prm_folder(self.run_dir / "prm", self.run_dir / "policy", cfg.calibration, cfg.task,
                                 say=self._say)
        summary = RunSummary(name=cfg.name, kind="train", algorithm=cfg.algorithm, seed=cfg.seed,
                             iterations=cfg.iterations, train_seconds=round(sum(r.get("t_iter", 0) for r in rows), 2),
                             eval_problems=min(cfg.eval_problems, len(self.heldout)),
                             eval_temperature=cfg.rollouts.temperature, eval_accuracy_before=self.eval_before,
                             eval_accuracy=eval_acc, eval_accuracy_greedy_before=self.eval_greedy_before,
                             eval_accuracy_greedy=eval_greedy, final_train_accuracy=rows[-1]["accuracy"] if rows else None,
                             train_questions=len(self.train_pool), heldout_questions=len(self.heldout))
        summary.write(self.run_dir)
        live = self.run_dir / "live_policy"
        shutil.rmtree(live, ignore_errors=True)
        if eval_acc is not None:
            before = f"{self.eval_before:.1%} before, " if self.eval_before is not None else ""
            greedy = f"{self.eval_greedy_before:.1%} -> " if self.eval_greedy_before is not None else ""
            self._say(f"{cfg.name}: held-out accuracy {before}{eval_acc:.1%} after {cfg.iterations} iterations of "
                      f"{cfg.algorithm} ({summary.eval_problems} problems, T={cfg.rollouts.temperature}; greedy "
                      f"pass@1 {greedy}{eval_greedy:.1%}); "
                      f"wrote {self.run_dir}/{{policy,prm,metrics.jsonl,plots,summary.json}}")
        return summary.model_dump()

    def _say(self, line: str) -> None:
        if self.console is not None:
            self.console.print(line, highlight=False)
        else:
            print(line, flush=True)


def iteration_line(row: dict, iterations: int) -> str:
    """`iter 3/20  acc 0.56  prm loss 0.123  ess 0.91  4.2 s`: what a log reader wants from each iteration."""
    parts = [f"iter {row['iter'] + 1}/{iterations}", f"acc {row['accuracy']:.2f}"]
    if row.get("prm_loss") is not None:
        parts.append(f"prm loss {row['prm_loss']:.4f}")
    if row.get("ess_frac") is not None:
        parts.append(f"ess {row['ess_frac']:.2f}")
    if row.get("eval_accuracy") is not None:
        parts.append(f"held-out {row['eval_accuracy']:.2f}")
    parts.append(f"{row['t_iter']:.1f} s")
    return "  ".join(parts)


@torch.no_grad()
def _logprob_check(policy, rollouts, pad_id: int, temperature: float, limit: int = 8) -> float | None:
    """Largest |sampler log-prob - trainer log-prob| over the sampled tokens of up to `limit` rollouts, computed
    before this iteration's update: the weights the engine sampled with must be the trainer's current ones, and the
    engine's processed log-probs (after temperature) must be the trainer's at the rollout temperature. With
    top_p < 1 vLLM's processed log-probs are renormalised over the top-p set, which the trainer's are not (as in
    veRL), so the check then also shows that renormalisation; every recipe here samples with top_p 1."""
    from trainer.models import collate

    rs = [r for r in rollouts if r.sampler_token_logprobs][:limit]
    if not rs:
        return None
    seqs = [r.ids for r in rs]
    plen = [r.prompt_len for r in rs]
    lp = token_logprobs(policy, collate(seqs, plen, [len(s) for s in seqs], pad_id), temperature=temperature)
    worst = 0.0
    for i, r in enumerate(rs):
        mine = lp[i, plen[i] : len(seqs[i])].tolist()
        worst = max([worst] + [abs(a - b) for a, b in zip(mine, r.sampler_token_logprobs)])
    return worst


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("acc {task.fields[acc]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)
