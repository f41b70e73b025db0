"""PRM folders as they come from the hub (no prm.json): which family, and the prm.json that scores it as its card says.

A PRM's scores are only right in its own input layout, so each family below is the layout of its model card, written
as the fields of prm.json (format, prompt template, step separator, step tag, +/- tokens, where the value is read):

- qwen-prm (Qwen2.5-Math-PRM-7B/72B, Qwen2.5-Math-7B-PRM800K; `Qwen2ForProcessRewardModel`): chat template with the
  card's system prompt, the question as the user turn, the steps as the assistant turn, each closed by `<extra_0>`;
  value = P(label 1) of the 2-label head at each `<extra_0>` (format qwen-step-tag).
- math-shepherd (peiyi9979/math-shepherd-mistral-7b-prm): `f"{question} {steps}"`, each step closed by " ки\\n";
  value = softmax over the logits of "+" and "-" at the ки token, P("+") (format math-shepherd).
- rlhflow (RLHFlow/Llama3.1-8B-PRM-Mistral-Data / -Deepseek-Data): a chat where the first user turn is
  `question + " " + step_1`, every later step a user turn, each answered by an assistant turn "+"; value = P("+")
  against "-" at the token before each assistant "+" (the card's `logits[:, -3]`; format math-shepherd, read_at
  before-tag). The separator is rendered from the folder's own chat template.
- eurus-implicit (PRIME-RL/EurusPRM-Stage1/2): implicit PRM, beta 0.001, chat template (user: question, assistant:
  steps joined by "\\n\\n"), value of step k = the cumulative sum of beta * log(pi/pi_ref) through step k (the card's
  cumsum gathered at each step's last token). pi_ref (Qwen2.5-Math-7B-Instruct) is not in the folder: it must be given.
- token-reward (repirl's own head PRM, `*ForTokenClassification` with one label) with the default layout.

Nothing here loads weights; the tokenizer is loaded to check that each tag is one token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from repirl.artifacts import (PRM_JSON, REFERENCE_DIR, ArtifactError, PRMConfig, Provenance, check_model_folder,
                              content_hash, load_prm_config)
from repirl.trajectory import PromptTemplate

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN_TAG = "<extra_0>"
SHEPHERD_TAG = "ки"
EURUS_BETA = 0.001

CARDS = {
    "qwen-prm": "https://huggingface.co/Qwen/Qwen2.5-Math-PRM-7B",
    "math-shepherd": "https://huggingface.co/peiyi9979/math-shepherd-mistral-7b-prm",
    "rlhflow": "https://github.com/RLHFlow/RLHF-Reward-Modeling/tree/main/math-rm",
    "eurus-implicit": "https://huggingface.co/PRIME-RL/EurusPRM-Stage2",
    "token-reward": "docs/architecture.md (repirl's own format)",
}
FAMILIES = tuple(CARDS)
# `--format` alone picks the family that defines that format
FAMILY_OF_FORMAT = {"qwen-step-tag": "qwen-prm", "math-shepherd": "math-shepherd", "implicit": "eurus-implicit",
                    "token-reward": "token-reward"}
# words in the folder's path or config `_name_or_path` that name a causal-LM family (a hub cache path keeps the repo
# name: models--RLHFlow--Llama3.1-8B-PRM-Mistral-Data/snapshots/...); the architecture alone cannot tell them apart
NAME_HINTS = (("rlhflow", "rlhflow"), ("shepherd", "math-shepherd"), ("eurusprm", "eurus-implicit"),
              ("implicit-prm", "eurus-implicit"), ("implicitprm", "eurus-implicit"))


@dataclass(frozen=True)
class Detection:
    config: PRMConfig
    family: str
    reason: str  # one line: what was chosen and the facts that chose it


def resolve_prm_config(prm_dir: str | Path) -> tuple[PRMConfig, str | None]:
    """prm.json when the folder has one (reason None); otherwise the detected config and the line saying why."""
    if (Path(prm_dir) / PRM_JSON).is_file() or not Path(prm_dir).is_dir():
        return load_prm_config(prm_dir), None
    found = _detect_once(str(prm_dir), str(Path(prm_dir).resolve()), Path(prm_dir).stat().st_mtime_ns)
    return found.config, found.reason


@lru_cache(maxsize=16)
def _detect_once(folder: str, _resolved: str, _mtime_ns: int) -> Detection:
    """Detection hashes every weight file (the revision): the service's pre-flight, engine choice and loader share
    one run per folder state."""
    return detect_prm_config(folder)


def _arch(cfg: dict) -> str:
    archs = cfg.get("architectures") or []
    return archs[0] if archs else ""


def _choose_family(folder: Path, cfg: dict, fmt: str | None) -> tuple[str, str]:
    """(family, why) from the architecture, then from the name; ArtifactError when nothing tells."""
    arch = _arch(cfg)
    names = f"{folder.resolve()} {cfg.get('_name_or_path', '')}".lower()
    hinted = next((fam for word, fam in NAME_HINTS if word in names), None)
    if fmt is not None:
        if fmt not in FAMILY_OF_FORMAT:
            raise ArtifactError(f"unknown format {fmt!r} (known: {', '.join(FAMILY_OF_FORMAT)})")
        if fmt == "math-shepherd" and hinted == "rlhflow":
            return "rlhflow", "--format math-shepherd and the name says RLHFlow"
        return FAMILY_OF_FORMAT[fmt], f"--format {fmt}"
    if arch == "Qwen2ForPrmModel":  # Skywork-o1-Open-PRM: see docs/service.md, "PRMs from the hub"
        raise ArtifactError(
            f"{folder}: {arch} (Skywork-o1-Open-PRM) is not served: its sigmoid value head (v_head) needs its own "
            f"model class, and its card appends the step token '\\n' as a separate id after each step, which repirl's "
            f"piecewise tokenization of step + separator does not reproduce")
    if arch.endswith("ForProcessRewardModel"):
        return "qwen-prm", f"config.json architectures = {arch}"
    labels = int(cfg.get("num_labels") or len(cfg.get("id2label") or {0: 0}))
    if arch.endswith("ForTokenClassification") and labels == 1:
        return "token-reward", f"config.json architectures = {arch} with one label"
    if arch.endswith("ForCausalLM") and hinted:
        return hinted, f"config.json architectures = {arch} and the folder's name names {hinted}"
    if arch.endswith("ForCausalLM"):
        raise ArtifactError(
            f"{folder}: a causal LM ({arch}) can be a Math-Shepherd, RLHFlow or implicit (EurusPRM) PRM and nothing in "
            f"the folder says which: run `repirl prm init {folder} --family NAME` (families: {', '.join(FAMILIES)}) "
            f"or write prm.json 'format'")
    raise ArtifactError(f"{folder}: config.json architectures = {arch or 'none'} is no PRM architecture repirl knows "
                        f"(Qwen2ForProcessRewardModel, *ForTokenClassification, *ForCausalLM): write prm.json 'format'")


def _one_token(tok, text: str) -> int | None:
    ids = tok.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def _require_chat_template(tok, folder: Path, family: str) -> None:
    if not getattr(tok, "chat_template", None):
        raise ArtifactError(f"{folder}: family {family} is scored in its chat template and the tokenizer has none: "
                            f"add it (tokenizer_config.json 'chat_template') or write prm.json 'prompt_template'")


def _bos_prefix(tok) -> str:
    """The BOS text a card's `tokenizer(text)` puts first (repirl encodes pieces without special tokens)."""
    ids = tok.encode("a")
    bos = getattr(tok, "bos_token", None)
    plain = tok.encode("a", add_special_tokens=False)
    if bos and ids and ids[0] == getattr(tok, "bos_token_id", None) and len(ids) > len(plain):
        return bos
    return ""


def _rlhflow_layout(tok, folder: Path) -> tuple[str, str]:
    """(prompt template, step separator) rendered from the folder's chat template with sentinels: the card's
    conversation is [user: question + " " + step_1, assistant: "+", user: step_2, assistant: "+", ...]."""
    q, a, b = "QQSENTINELQQ", "AASENTINELAA", "BBSENTINELBB"
    conv = [{"role": "user", "content": f"{q} {a}"}, {"role": "assistant", "content": "+"},
            {"role": "user", "content": b}, {"role": "assistant", "content": "+"}]
    text = tok.apply_chat_template(conv, tokenize=False)
    if f"{q} {a}" not in text or b not in text:
        raise ArtifactError(f"{folder}: the chat template changes the turns' text, so the steps' layout cannot be "
                            f"derived: write prm.json 'prompt_template' and 'step_separator'")
    prompt = text[:text.index(q)] + "{question}"  # the " " before step 1 goes with it (first_step_prefix)
    sep = text[text.index(a) + len(a):text.index(b)]
    return prompt, sep


def detect_prm_config(folder: str | Path, fmt: str | None = None, family: str | None = None,
                      reference_model: str | None = None) -> Detection:
    """The prm.json a hub PRM folder needs, worked out from config.json, the tokenizer and its chat template.
    Raises ArtifactError naming the missing fact and the prm.json key (or flag) that supplies it."""
    from transformers import AutoTokenizer

    folder = check_model_folder(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if family is not None and family not in CARDS:
        raise ArtifactError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    why = f"--family {family}" if family else None
    if family is None:
        family, why = _choose_family(folder, cfg, fmt)
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # a tokenizer that does not load: name the folder
        raise ArtifactError(f"{folder}: cannot load the tokenizer: {e}") from e
    prov = Provenance(algorithm="external", base_model=family)
    facts: list[str] = [why]
    if family == "qwen-prm":
        tag_id = _one_token(tok, QWEN_TAG)
        if tag_id is None:
            raise ArtifactError(f"{folder}: family qwen-prm reads rewards at {QWEN_TAG!r}, which the tokenizer does "
                                f"not have as one token: write prm.json 'step_tag' (and 'step_separator')")
        _require_chat_template(tok, folder, family)
        facts.append(f"step tag {QWEN_TAG} is token {tag_id}")
        config = PRMConfig(format="qwen-step-tag", step_separator=QWEN_TAG, step_tag=QWEN_TAG,
                           prompt_template=PromptTemplate(kind="chat", system=QWEN_SYSTEM),
                           default_aggregation="min", provenance=prov)
    elif family in ("math-shepherd", "rlhflow"):
        pos, neg = _one_token(tok, "+"), _one_token(tok, "-")
        if pos is None or neg is None:
            raise ArtifactError(f"{folder}: family {family} reads P('+') against P('-') and the tokenizer does not "
                                f"have both as single tokens: write prm.json 'positive_token' and 'negative_token'")
        if family == "math-shepherd":
            sep = f" {SHEPHERD_TAG}\n"
            sep_ids = tok.encode("x" + sep, add_special_tokens=False)
            tag = next((t for t in (SHEPHERD_TAG, " " + SHEPHERD_TAG) if _one_token(tok, t) in sep_ids), None)
            if tag is None:
                raise ArtifactError(f"{folder}: family math-shepherd reads rewards at the step tag {SHEPHERD_TAG!r}, "
                                    f"which the tokenizer does not have as one token: write prm.json 'step_tag'")
            facts.append(f"step tag {SHEPHERD_TAG} is token {_one_token(tok, tag)}, '+'/'-' are tokens {pos}/{neg}")
            config = PRMConfig(format="math-shepherd", step_separator=sep, step_tag=tag, positive_token="+",
                               negative_token="-", default_aggregation="min", provenance=prov,
                               prompt_template=PromptTemplate(template=_bos_prefix(tok) + "{question}",
                                                              first_step_prefix=" "))
        else:
            _require_chat_template(tok, folder, family)
            prompt, sep = _rlhflow_layout(tok, folder)
            facts.append(f"separator = an assistant turn '+' from the chat template, '+'/'-' are tokens {pos}/{neg}")
            config = PRMConfig(format="math-shepherd", step_separator=sep, step_tag="+", read_at="before-tag",
                               positive_token="+", negative_token="-", default_aggregation="min", provenance=prov,
                               prompt_template=PromptTemplate(template=prompt, first_step_prefix=" "))
    elif family == "eurus-implicit":
        _require_chat_template(tok, folder, family)
        inside = (folder / REFERENCE_DIR / "config.json").is_file()
        ref = str(Path(reference_model).resolve()) if reference_model else (REFERENCE_DIR if inside else None)
        if ref is None:
            raise ArtifactError(f"{folder}: family eurus-implicit needs its reference model pi_ref (the card's "
                                f"Qwen2.5-Math-7B-Instruct), which is not in the folder: pass "
                                f"`repirl prm init {folder} --reference DIR` or write prm.json 'reference_model'")
        facts.append(f"reference model {ref}, beta {EURUS_BETA} (card)")
        config = PRMConfig(format="implicit", step_separator="\n\n", reference_model=str(ref), beta=EURUS_BETA,
                           step_reward="cumulative", prompt_template=PromptTemplate(kind="chat"),
                           default_aggregation="last", provenance=prov)
    else:
        config = PRMConfig(format="token-reward", provenance=prov)
    config = config.model_copy(update={"revision": content_hash(folder)})
    flags = f" --reference {config.reference_model}" if reference_model else ""
    reason = (f"{folder}: no {PRM_JSON}; serving it as {family} (format {config.format}) because "
              f"{'; '.join(facts)} [{CARDS[family]}]. `repirl prm init {folder}{flags}` writes this down")
    return Detection(config=config, family=family, reason=reason)
