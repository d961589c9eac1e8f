"""Step 3a — the reward model: a learned stand-in for the labeler's preferences.

InstructGPT (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155, section 3.5) starts the
reward model from the SFT model, replaces the language-model head with a scalar head
r_theta(x, y) read at the last token, and trains it on comparisons (x, y_w, y_l), where
the labeler preferred y_w, with the Bradley-Terry loss (Bradley & Terry 1952):

    L(theta) = - E_{(x, y_w, y_l)} [ log sigmoid( r_theta(x, y_w) - r_theta(x, y_l) ) ]

i.e. P(y_w preferred to y_l) = sigmoid(r_w - r_l). Only *differences* of rewards are
learned, so after training we shift and scale the scores so that samples of the SFT model
score mean 0 and standard deviation 1 (InstructGPT normalised the same way), which keeps
PPO's KL coefficient meaningful across runs.

The scalar head is Hugging Face's `AutoModelForSequenceClassification` with one label: a
linear map of the final hidden state at the rightmost token that is not padding. For a
finished response that token is the EOS that ends it, so the reward model reads the whole
exchange before it scores; a response that hit the length limit gets no EOS it never
wrote, so the reward model can see, as the labeler does, that it never ended.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .labeler import Labeler
from .model import is_cached, resume_dir, save_checkpoint
from .preferences import Comparison, collect_preferences
from .presets import Preset, RewardConfig, get_preset
from .splits import SPLITS_VERSION, data_splits
from .training import TrainLog, train_loop
from .utils import atomic_dir, cache_root, config_key, pick_device, set_seed

REWARD_VERSION = 5  # bump when preference collection, the labeler or the reward model changes


# ---------------------------------------------------------------------------------------
# Encoding (prompt, response) for the reward model, and the loss
# ---------------------------------------------------------------------------------------
def encode_exchange(tokenizer, instruction: str, response: str, finished: bool = True) -> list[int]:
    """Token ids of the chat prompt and the response, and the EOS that ended it — only if it
    did end (`finished`): the reward model reads at the last token either way."""
    from .sft import chat_prompt

    ids = tokenizer(chat_prompt(tokenizer, instruction) + response, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if finished else ids


def left_pad(sequences: list[list[int]], pad_token_id: int) -> dict:
    """Left-pad id lists into input_ids / attention_mask / position_ids (positions count
    real tokens only, so padding never shifts a sequence's positions)."""
    longest = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_token_id] * (longest - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (longest - len(s)) + [1] * len(s) for s in sequences])
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), averaged (logsigmoid is the stable form)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def rewards(model, batch: dict) -> torch.Tensor:
    """Scalar reward per sequence, read at the last non-pad token."""
    return model(**batch, use_cache=False).logits.squeeze(-1).float()


def pair_batch(tokenizer, pairs: list[Comparison]) -> dict:
    """Chosen sequences first, then rejected ones, in one left-padded batch."""
    seqs = [encode_exchange(tokenizer, p.prompt, p.chosen, p.chosen_finished) for p in pairs]
    seqs += [encode_exchange(tokenizer, p.prompt, p.rejected, p.rejected_finished) for p in pairs]
    return left_pad(seqs, tokenizer.pad_token_id)


def pair_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    r = rewards(model, batch)
    half = r.shape[0] // 2
    return bradley_terry_loss(r[:half], r[half:]), torch.tensor(batch["attention_mask"].sum().item())


@torch.no_grad()
def pairwise_accuracy(model, tokenizer, pairs: list[Comparison], batch_size: int = 64) -> dict:
    """Share of pairs where r(chosen) > r(rejected), overall and per pair type, the mean
    margin r(chosen) - r(rejected), and the Bradley-Terry loss."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    margins = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i: i + batch_size]
        r = rewards(model, {k: v.to(device) for k, v in pair_batch(tokenizer, chunk).items()})
        margins += (r[: len(chunk)] - r[len(chunk):]).tolist()
    model.train(was_training)
    per_type: dict[str, list[bool]] = {}
    for p, m in zip(pairs, margins):
        per_type.setdefault(p.pair_type, []).append(m > 0)
    n = max(1, len(margins))
    return {"accuracy": sum(m > 0 for m in margins) / n, "margin": sum(margins) / n,
            "loss": sum(-F.logsigmoid(torch.tensor(m)).item() for m in margins) / n,
            "per_type": {t: sum(v) / len(v) for t, v in sorted(per_type.items())},
            "per_type_count": {t: len(v) for t, v in sorted(per_type.items())}}


def train_reward_model(model, tokenizer, train_pairs: list[Comparison], val_pairs: list[Comparison],
                       cfg: RewardConfig, device=None, seed: int = 0, progress: bool = True,
                       resume_dir: Path | None = None, callback=None, desc: str = "reward model") -> TrainLog:
    """Bradley-Terry training on random batches of pairs, validated on held-out pairs."""
    if not train_pairs:
        raise ValueError("no preference pairs to train on: every sample of every prompt tied. "
                         "Use more prompts, a larger k or a higher sampling temperature.")
    device = device or pick_device()

    def next_batch(generator):
        idx = torch.randint(len(train_pairs), (cfg.batch_size,), generator=generator).tolist()
        return pair_batch(tokenizer, [train_pairs[i] for i in idx])

    def val_loss(m):
        return pairwise_accuracy(m, tokenizer, val_pairs)["loss"] if val_pairs else float("nan")

    return train_loop(model, next_batch, pair_loss, cfg, val_loss_fn=val_loss, device=device, seed=seed,
                      callback=callback, progress=progress, resume_dir=resume_dir, desc=desc)


# ---------------------------------------------------------------------------------------
# The trained reward model, normalised, and its cache
# ---------------------------------------------------------------------------------------
@dataclass
class RewardModel:
    model: object
    tokenizer: object
    info: dict
    log: TrainLog
    path: Path

    @property
    def mean(self) -> float:
        return self.info.get("reward_mean", 0.0)

    @property
    def std(self) -> float:
        return self.info.get("reward_std", 1.0)

    @torch.no_grad()
    def raw_scores(self, instructions: list[str], responses: list[str], finished: list[bool] | None = None,
                   batch_size: int = 64) -> torch.Tensor:
        """Scores of (instruction, response) exchanges; `finished[i]` False: response i never
        ended (default: every response ended)."""
        finished = [True] * len(responses) if finished is None else list(finished)
        if not len(instructions) == len(responses) == len(finished):
            raise ValueError(f"{len(instructions)} instructions, {len(responses)} responses and "
                             f"{len(finished)} finished flags: give one of each per exchange")
        device = next(self.model.parameters()).device
        self.model.eval()
        out = []
        for i in range(0, len(responses), batch_size):
            seqs = [encode_exchange(self.tokenizer, x, y, f) for x, y, f in
                    zip(instructions[i: i + batch_size], responses[i: i + batch_size], finished[i: i + batch_size])]
            out.append(rewards(self.model, {k: v.to(device) for k, v in
                                            left_pad(seqs, self.tokenizer.pad_token_id).items()}).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, instructions: list[str], responses: list[str], finished: list[bool] | None = None,
              batch_size: int = 64) -> torch.Tensor:
        """Normalised reward: SFT samples score mean 0, std 1."""
        return (self.raw_scores(instructions, responses, finished, batch_size) - self.mean) / self.std


def reward_model_from(causal_lm_path: Path):
    """A fresh reward model: the causal LM's transformer with a new scalar head (the LM head
    is dropped; Hugging Face's report that `score.weight` is new is expected and silenced)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(causal_lm_path, num_labels=1, use_safetensors=True)
    finally:
        logging.set_verbosity(verbosity)
    return model


def load_reward_model(path: Path, device="cpu") -> RewardModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    info = json.loads((Path(path) / "train_log.json").read_text())
    log = TrainLog(**info.pop("log"))
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).to(device).eval()
    return RewardModel(model, AutoTokenizer.from_pretrained(path), info, log, Path(path))


def reward_cache_dir(preset: Preset, sft_path: Path) -> Path:
    # collection settings included
    key = config_key("reward", REWARD_VERSION, SPLITS_VERSION, sft_path.name, asdict(preset.reward))
    return cache_root() / "reward" / f"{preset.name}-seed{preset.seed}-{key}"


def _pairs_from_jsonl(path: Path) -> list[Comparison]:
    return [Comparison(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _pairs_to_jsonl(pairs: list[Comparison]) -> str:
    return "".join(json.dumps(asdict(p)) + "\n" for p in pairs)


def labeler_for(preset: Preset) -> Labeler:
    return Labeler(noise=preset.reward.label_noise)


COLLECTION_FIELDS = ("n_prompts", "n_eval_prompts", "k", "task_share", "temperature", "max_new_tokens", "label_noise")


def preference_data(preset: Preset, sft_model, progress: bool = True) -> dict:
    """Preference pairs collected from the SFT model: train pairs from the training prompts
    (the noisy labeler) and held-out pairs from evaluation prompts (`embiggen.splits`;
    labelled without noise, so accuracy is measured against the gold preference). Also the
    SFT samples of some *training* prompts that set the reward scale. Cached on their own,
    so retraining the reward model with other settings does not sample everything again."""
    cfg = preset.reward
    collection = {k: getattr(cfg, k) for k in COLLECTION_FIELDS}
    key = config_key("prefs", REWARD_VERSION, SPLITS_VERSION, sft_model.path.name, collection)
    folder = cache_root() / "preferences" / f"{preset.name}-seed{preset.seed}-{key}"
    if (folder / "done.json").exists():
        return {"train_pairs": _pairs_from_jsonl(folder / "train_pairs.jsonl"),
                "eval_pairs": _pairs_from_jsonl(folder / "eval_pairs.jsonl"),
                "norm_samples": json.loads((folder / "norm_samples.json").read_text()),
                "collect_seconds": json.loads((folder / "done.json").read_text())["collect_seconds"]}
    started = time.perf_counter()
    splits, tokenizer = data_splits(preset), sft_model.tokenizer
    sample = dict(k=cfg.k, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    if progress:
        print(f"collecting preferences: {cfg.k} samples for each of {cfg.n_prompts + cfg.n_eval_prompts:,} prompts")
    train = collect_preferences(sft_model.model, tokenizer, splits.preferences, labeler_for(preset), seed=preset.seed,
                                **sample)
    held = collect_preferences(sft_model.model, tokenizer, splits.rm_eval, Labeler(), seed=preset.seed + 1, **sample)
    norm = [{"instruction": e.instruction, "samples": ys, "finished": fs}
            for e, ys, fs in list(zip(train.prompts, train.samples, train.finished))[: cfg.n_eval_prompts]]
    seconds = round(time.perf_counter() - started, 2)
    with atomic_dir(folder) as tmp:
        (tmp / "train_pairs.jsonl").write_text(_pairs_to_jsonl(train.pairs))
        (tmp / "eval_pairs.jsonl").write_text(_pairs_to_jsonl(held.pairs))
        (tmp / "norm_samples.json").write_text(json.dumps(norm))
        (tmp / "done.json").write_text(json.dumps({**collection, "collect_seconds": seconds}))
    return {"train_pairs": train.pairs, "eval_pairs": held.pairs, "norm_samples": norm, "collect_seconds": seconds}


def train_or_load_reward(preset: str | Preset | None = None, force: bool = False, progress: bool = True,
                         device=None) -> RewardModel:
    """The reward model for `preset`, from the cache or trained: collect preferences from the
    (cached) SFT model, train with Bradley-Terry, normalise on SFT samples. The train and
    held-out pairs are kept beside the weights (`train_pairs.jsonl`, `eval_pairs.jsonl`)."""
    from .sft import train_or_load_sft

    preset = get_preset(preset)
    cfg = preset.reward
    device = device or pick_device()
    sft_model = train_or_load_sft(preset, progress=progress, device=device)
    path = reward_cache_dir(preset, sft_model.path)
    if is_cached(path) and not force:
        return load_reward_model(path, device)

    set_seed(preset.seed)
    data = preference_data(preset, sft_model, progress=progress)
    rm = fit_reward_model(preset, sft_model, data["train_pairs"], data["eval_pairs"], data["norm_samples"], path,
                          steps=cfg.steps, progress=progress, device=device, desc=f"reward model {preset.name}")
    rm.info["collect_seconds"] = data["collect_seconds"]  # sampling K answers per prompt and ranking them
    rm.info["n_prompts"] = cfg.n_prompts
    save_checkpoint(path, rm.model, rm.tokenizer, rm.info, rm.log,
                    extra_files={"train_pairs.jsonl": _pairs_to_jsonl(data["train_pairs"]),
                                 "eval_pairs.jsonl": _pairs_to_jsonl(data["eval_pairs"])})
    return rm


def fit_reward_model(preset: Preset, sft_model, train_pairs: list[Comparison], eval_pairs: list[Comparison],
                     norm_samples: list[dict], path: Path, steps: int, progress: bool = True, device=None,
                     desc: str = "reward model") -> RewardModel:
    """A fresh reward model from the SFT weights, trained on `train_pairs` for `steps` steps,
    normalised so that the SFT model's samples in `norm_samples` (training prompts) score
    mean 0, std 1, and evaluated on `eval_pairs`. (Not saved: the caller decides where.)"""
    from dataclasses import replace

    cfg = replace(preset.reward, steps=steps)
    started = time.perf_counter()
    tokenizer = sft_model.tokenizer
    set_seed(preset.seed)
    model = reward_model_from(sft_model.path)
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0 / (model.config.hidden_size + 1) ** 0.5)

    def record(step, log):  # held-out accuracy at every evaluation, for the notebook's plot
        log.metrics.setdefault("val_accuracy_steps", []).append(step)
        log.metrics.setdefault("val_accuracy", []).append(pairwise_accuracy(model, tokenizer, eval_pairs)["accuracy"])

    log = train_reward_model(model, tokenizer, train_pairs, eval_pairs, cfg, device=device, seed=preset.seed,
                             progress=progress, resume_dir=resume_dir(path), callback=record, desc=desc)
    rm = RewardModel(model.eval(), tokenizer, {}, log, path)
    flat = [(row["instruction"], y, f) for row in norm_samples for y, f in zip(row["samples"], row["finished"])]
    raw = rm.raw_scores([x for x, _, _ in flat], [y for _, y, _ in flat], [f for _, _, f in flat])
    metrics = pairwise_accuracy(model, tokenizer, eval_pairs)
    rm.info = {"preset": preset.name, "seed": preset.seed, "sft": sft_model.path.name,
               "n_pairs": len(train_pairs), "n_eval_pairs": len(eval_pairs),
               "val_accuracy_steps": log.metrics.get("val_accuracy_steps", []),
               "val_accuracy": log.metrics.get("val_accuracy", []),
               "train_seconds": round(time.perf_counter() - started, 2),  # training and normalising
               "reward_mean": raw.mean().item(), "reward_std": max(raw.std().item(), 1e-6),
               "pairwise_accuracy": metrics["accuracy"], "margin": metrics["margin"],
               "per_type_accuracy": metrics["per_type"], "per_type_count": metrics["per_type_count"],
               "val_loss": log.val_loss[-1] if log.val_loss else None, "device": str(device)}
    return rm


def load_pairs(rm: RewardModel, split: str = "eval") -> list[Comparison]:
    """The train or held-out (eval) preference pairs the reward model was built from."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return _pairs_from_jsonl(rm.path / f"{split}_pairs.jsonl")

