"""PRM and policy artifacts: Hugging Face model folders (+ `prm.json` for PRMs), written atomically.

A PRM folder loads in transformers and in vLLM (token-reward: `*ForTokenClassification`, num_labels=1; vLLM
`runner="pooling"`, `token_classify`, `use_activation=False`). `prm.json` says how to use it: format, step
separator, prompt template, default aggregation, provenance, and a content hash of the weights used as the model
revision in cache keys (so a retrained PRM never reads its predecessor's cached scores).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, Field, ValidationError

from repirl.calibration import Calibration
from repirl.trajectory import DEFAULT_SEP, PromptTemplate
from repirl.validation import describe

PRM_JSON = "prm.json"
PRMFormat = Literal["token-reward", "qwen-step-tag", "math-shepherd", "implicit"]
Aggregation = Literal["mean-token", "min", "last", "prod", "sum"]
StepReward = Literal["mean", "sum", "min", "cumulative"]
ReadAt = Literal["tag", "before-tag"]


class ArtifactError(ValueError):
    """A model folder that is missing, unreadable or malformed; the message names the path."""


class Provenance(BaseModel):
    algorithm: str = "init"  # repirl | prime | rloo | offline | init (untrained) | external
    base_model: str | None = None
    data: str | None = None
    iterations: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)


class PRMConfig(BaseModel):
    """The schema of prm.json."""

    schema_version: int = 1
    format: PRMFormat = "token-reward"
    step_separator: str = DEFAULT_SEP
    prompt_template: PromptTemplate = Field(default_factory=PromptTemplate)
    default_aggregation: Aggregation = "mean-token"
    # token formats: how a step's token values become its step reward; None = the format's own rule (token-reward:
    # mean, implicit: sum as in PRIME). "min" flags a step by its least likely token (docs/results.md, section 2).
    # "cumulative": the sum of every token value from the first step through this one (EurusPRM's card reads the
    # implicit PRM's Q value q_t this way); it depends only on the prefix through the step, so caching holds.
    step_reward: StepReward | None = None
    step_tag: str | None = None  # qwen-step-tag / math-shepherd: the text marking the end of a step
    positive_token: str | None = None  # math-shepherd: the token whose probability is the step reward ("+")
    negative_token: str | None = None  # math-shepherd: ("-")
    # math-shepherd: where the +/- logits are read. "tag" (Math-Shepherd): at the step tag itself; "before-tag"
    # (RLHFlow's Llama3.1 PRMs, whose separator is an assistant turn "+"): at the token before the tag, whose
    # logits predict it. None = "tag"
    read_at: ReadAt | None = None
    reference_model: str | None = None  # implicit: path of pi_ref, relative to the PRM folder or absolute
    beta: float | None = None  # implicit: reward = beta * log(pi_phi / pi_ref)
    # token-reward: each token value is token_bound * tanh(head / token_bound), the bounded reward the trainer's head
    # PRM was trained on (trainer/models.py RewardModel, `prm.reward_bound`); None: the raw head's output
    token_bound: float | None = Field(None, gt=0)
    provenance: Provenance = Field(default_factory=Provenance)
    # raw step reward -> p_correct (repirl/calibration.py); None: the service returns no p_correct
    calibration: Calibration | None = None
    revision: str = ""  # content hash of the model files; filled in by save_prm


# prm.json fields that never change a cached step reward: provenance, the revision itself, the aggregation (applied
# to the step rewards per request) and the calibration (raw reward -> p_correct, applied after the cache; its own
# `revision` names the scoring revision it was fitted on). Every other field, present or future, is in the hash.
_NOT_SCORING = {"provenance", "revision", "default_aggregation", "calibration"}
# fields added after PRMs were deployed: hashed only when set, so existing PRMs keep their revisions (and caches)
_HASHED_WHEN_SET = {"read_at", "token_bound"}


def scoring_revision(cfg: PRMConfig) -> str:
    """The revision cache keys, /v1/models and calibrations use: a hash of the weights' content hash and of every
    prm.json field that changes a score (format, separator, template, step rule, step tag, positive/negative tokens,
    reference model, beta, ...), so a changed config never reads the cached rewards of the old one (Redis keeps them
    for days and replicas share them)."""
    scoring = cfg.model_dump(mode="json", exclude=_NOT_SCORING)
    for key in _HASHED_WHEN_SET:
        if scoring.get(key) is None:
            scoring.pop(key, None)
    if not scoring["prompt_template"].get("first_step_prefix"):  # likewise, inside the template
        scoring["prompt_template"].pop("first_step_prefix", None)
    blob = json.dumps({"weights": cfg.revision, "config": scoring}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def active_calibration(cfg: PRMConfig | None) -> Calibration | None:
    """The PRM config's calibration when it was fitted on the rewards this config produces (its `revision` is this
    config's scoring revision, or unset), else None: another step rule's raw rewards are on another scale."""
    cal = getattr(cfg, "calibration", None)
    if cal is None:
        return None
    if cal.revision and cal.revision != scoring_revision(cfg):
        return None
    return cal


POLICY_JSON = "policy.json"


class PolicyConfig(BaseModel):
    """The schema of policy.json, beside a plain causal-LM folder: how prompts and steps are written for it."""

    schema_version: int = 1
    step_separator: str = DEFAULT_SEP
    prompt_template: PromptTemplate = Field(default_factory=PromptTemplate)
    task: dict[str, Any] = Field(default_factory=dict)  # e.g. {"name": "arithmetic", "config": {...}}
    provenance: Provenance = Field(default_factory=Provenance)


def load_policy_config(policy_dir: str | Path) -> PolicyConfig:
    """policy.json if present (defaults otherwise: any causal-LM folder can be a policy)."""
    path = Path(check_model_folder(policy_dir)) / POLICY_JSON
    if not path.exists():
        return PolicyConfig()
    try:
        return PolicyConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as e:
        raise ArtifactError(f"{path} is invalid: {e}") from None


def eos_token_ids(folder: str | Path, tokenizer=None) -> list[int]:
    """Every id that ends a generation for this model folder, the tokenizer's own EOS first (the one a reference
    solution ends with): generation_config.json `eos_token_id` (an int or a list: Qwen2.5-Instruct lists <|im_end|>
    and <|endoftext|>, Llama 3 Instruct <|eot_id|> and <|end_of_text|>), then config.json's, then the tokenizer's."""
    ids: list[int] = []

    def add(value) -> None:
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)

    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        add(tokenizer.eos_token_id)
    for name in ("generation_config.json", "config.json"):
        path = Path(folder) / name
        if path.is_file():
            try:
                add(json.loads(path.read_text(encoding="utf-8")).get("eos_token_id"))
            except (OSError, json.JSONDecodeError) as e:
                raise ArtifactError(f"{path} is unreadable: {e}") from None
    if not ids:
        raise ArtifactError(f"{folder}: no EOS token id (tokenizer, generation_config.json and config.json name none)")
    return ids


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir` in one rename.

    A crash leaves either the old folder or the new one, never a half-written mix (the temp folder is removed).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def content_hash(folder: str | Path) -> str:
    """sha256 over every file's relative path and bytes, prm.json excluded; first 16 hex digits."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != PRM_JSON):
        h.update(str(path.relative_to(folder)).encode())
        h.update(b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def save_model_folder(model, tokenizer, out_dir: str | Path, prm_config: PRMConfig | None = None,
                      policy_config: PolicyConfig | None = None) -> Path:
    """Save a model (+ tokenizer, + prm.json with its revision when a PRMConfig is given) atomically."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if policy_config is not None:
            (tmp / POLICY_JSON).write_text(policy_config.model_dump_json(indent=2), encoding="utf-8")
        if prm_config is not None:
            cfg = prm_config.model_copy(update={"revision": content_hash(tmp)})
            (tmp / PRM_JSON).write_text(cfg.model_dump_json(indent=2), encoding="utf-8")
    return Path(out_dir)


REFERENCE_DIR = "reference"  # where an implicit-format PRM keeps pi_ref, inside its folder


def save_implicit_prm(model, reference, tokenizer, out_dir: str | Path, prm_config: PRMConfig) -> Path:
    """An implicit-format PRM folder, atomically: pi_phi at the top, pi_ref (+ tokenizer) in `reference/`, and
    prm.json pointing at it, with the revision of everything written."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        reference.save_pretrained(tmp / REFERENCE_DIR)
        tokenizer.save_pretrained(tmp / REFERENCE_DIR)
        cfg = prm_config.model_copy(update={"format": "implicit", "reference_model": REFERENCE_DIR,
                                            "revision": content_hash(tmp)})
        (tmp / PRM_JSON).write_text(cfg.model_dump_json(indent=2), encoding="utf-8")
    return Path(out_dir)


def reference_dir(prm_dir: str | Path, cfg: PRMConfig) -> Path:
    """The implicit format's pi_ref folder (prm.json `reference_model`, relative to the PRM folder or absolute)."""
    if not cfg.reference_model:
        raise ArtifactError(f"{Path(prm_dir) / PRM_JSON}: field 'reference_model' is required for format 'implicit'")
    ref = Path(cfg.reference_model)
    return check_model_folder(ref if ref.is_absolute() else Path(prm_dir) / ref)


def load_prm_config(prm_dir: str | Path) -> PRMConfig:
    """Read and validate prm.json; every failure names the path."""
    path = Path(prm_dir) / PRM_JSON
    if not Path(prm_dir).is_dir():
        raise ArtifactError(f"PRM folder {prm_dir} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: not a repirl PRM folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is unreadable: {e}") from None
    try:
        cfg = PRMConfig.model_validate(raw)
    except ValidationError as e:
        raise ArtifactError(f"{path}: {describe(e)}") from None
    if not cfg.revision:
        cfg = cfg.model_copy(update={"revision": content_hash(prm_dir)})
    return cfg


def check_model_folder(folder: str | Path) -> Path:
    """A loadable Hugging Face folder (config.json + weights) or an ArtifactError naming the path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder / 'config.json'} is missing: not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ArtifactError(f"{folder} has no weights (*.safetensors)")
    return folder


def init_token_reward_prm(policy_dir: str | Path, out_dir: str | Path, provenance: Provenance | None = None,
                          **prm_fields) -> Path:
    """A token-reward PRM (`Qwen2ForTokenClassification`-style, num_labels=1) initialised from a policy folder.

    The body is the policy's; the scalar head is transformers' fresh init (normal, std = initializer_range), so an
    untrained PRM gives small, input-dependent rewards: a usable control in evaluations, not a constant.
    """
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    policy_dir = check_model_folder(policy_dir)
    config = AutoConfig.from_pretrained(policy_dir, num_labels=1)
    model = AutoModelForTokenClassification.from_pretrained(policy_dir, config=config)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    policy_cfg = load_policy_config(policy_dir)  # the PRM reads trajectories exactly as its policy writes them
    prm_fields.setdefault("step_separator", policy_cfg.step_separator)
    prm_fields.setdefault("prompt_template", policy_cfg.prompt_template)
    prov = provenance or Provenance(algorithm="init", base_model=str(policy_dir))
    return save_model_folder(model, tokenizer, out_dir, PRMConfig(format="token-reward", provenance=prov, **prm_fields))
