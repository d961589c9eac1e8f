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
linear map of the final hidden state, read at the last token (`rewards`). For a finished
response that token is the EOS that ends it, so the reward model reads the whole
exchange before it scores; a response that hit the length limit gets no EOS it never
wrote, so the reward model can see, as the labeler does, that it never ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging

from embiggen.judging.labeler import Labeler
from embiggen.judging.preferences import Comparison, collect_preferences, read_pairs
from embiggen.lm.distributed import shard
from embiggen.lm.generate import position_ids_from
from embiggen.lm.lora import add_adapters
from embiggen.lm.tokenizer import chat_prompt, encode
from embiggen.lm.training import TrainLog, load_checkpoint, resume_dir, train_loop
from embiggen.presets import RewardConfig
from embiggen.utils import pick_device, set_seed


# ---------------------------------------------------------------------------------------
# Encoding (prompt, response) for the reward model, and the loss
# ---------------------------------------------------------------------------------------
def encode_exchange(tokenizer, instruction: str, response: str, finished: bool = True) -> list[int]:
    """Token ids of the chat prompt and the response, and the EOS that ended it — only if it
    did end (`finished`): the reward model reads at the last token either way."""
    ids = encode(tokenizer, chat_prompt(tokenizer, instruction) + response)
    return ids + [tokenizer.eos_token_id] if finished else ids


def left_pad(tokenizer, sequences: list[list[int]]) -> dict:
    """Left-pad id lists (the tokenizer's `pad`) into input_ids / attention_mask, plus
    position_ids that count real tokens only, so padding never shifts a sequence's positions."""
    batch = tokenizer.pad({"input_ids": sequences}, padding=True, padding_side="left", return_tensors="pt",
                          return_attention_mask=True)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "position_ids": position_ids_from(batch["attention_mask"])}


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), averaged (logsigmoid is the stable form)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def rewards(model, batch: dict) -> torch.Tensor:
    """Scalar reward per sequence, read at its last token. The sequences are left-padded, so
    that is the last position: for a finished response, the EOS that ended it. (Hugging Face's
    own pooling reads at the last token that is not the pad token, which, for a model whose pad
    token *is* its EOS, is the token before the EOS.) The same two steps as its forward pass:
    the transformer's last hidden states, then the scalar head."""
    hidden = model.base_model(**batch, use_cache=False).last_hidden_state
    return model.score(hidden)[:, -1, 0].float()


def pair_batch(tokenizer, pairs: list[Comparison]) -> dict:
    """Chosen sequences first, then rejected ones, in one left-padded batch."""
    seqs = [encode_exchange(tokenizer, p.prompt, p.chosen, p.chosen_finished) for p in pairs]
    seqs += [encode_exchange(tokenizer, p.prompt, p.rejected, p.rejected_finished) for p in pairs]
    return left_pad(tokenizer, seqs)


def pair_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    r = rewards(model, batch)
    half = r.shape[0] // 2
    return bradley_terry_loss(r[:half], r[half:]), torch.tensor(batch["attention_mask"].sum().item())


def group_by_prompt(pairs: list[Comparison]) -> list[list[Comparison]]:
    """The pairs of each prompt together, prompts in the order they first appear."""
    groups: dict[str, list[Comparison]] = {}
    for p in pairs:
        groups.setdefault(p.prompt, []).append(p)
    return list(groups.values())


def ranking_batch(tokenizer, groups: list[list[Comparison]]) -> dict:
    """InstructGPT's batch element: every answer of a prompt's ranking read once, and all its
    pairs as (chosen, rejected) indices into them. K answers make up to K (K - 1) / 2 pairs, from
    K forward passes instead of K (K - 1)."""
    seqs, index, chosen, rejected = [], {}, [], []
    for group in groups:
        for p in group:
            for answer, done, out in ((p.chosen, p.chosen_finished, chosen), (p.rejected, p.rejected_finished, rejected)):
                key = (p.prompt, answer, done)
                if key not in index:
                    index[key] = len(seqs)
                    seqs.append(encode_exchange(tokenizer, p.prompt, answer, done))
                out.append(index[key])
    return {**left_pad(tokenizer, seqs), "chosen_index": torch.tensor(chosen), "rejected_index": torch.tensor(rejected)}


def ranking_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The Bradley-Terry loss over every pair of the batch's rankings (each pair weighs the same:
    InstructGPT's loss up to its constant 1 / C(K, 2))."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    r = rewards(model, inputs)
    return (bradley_terry_loss(r[batch["chosen_index"]], r[batch["rejected_index"]]),
            torch.tensor(batch["attention_mask"].sum().item()))


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
    """Bradley-Terry training, validated on held-out pairs. cfg.batching "prompt" (InstructGPT's):
    each step takes whole rankings, every pair of a prompt in one batch element, as many prompts
    as make cfg.batch_size pairs on average; "pair": cfg.batch_size pairs drawn independently
    (with replacement), so one answer's pairs land in different steps, the set-up InstructGPT
    found to overfit."""
    if not train_pairs:
        raise ValueError("no preference pairs to train on: every sample of every prompt tied. "
                         "Use more prompts, a larger k or a higher sampling temperature.")
    if cfg.batching not in ("prompt", "pair"):
        raise ValueError(f"unknown reward-model batching {cfg.batching!r}; valid: 'prompt' (InstructGPT), 'pair'")
    device = device or pick_device()
    groups = group_by_prompt(train_pairs)
    prompts_per_batch = max(1, round(cfg.batch_size * len(groups) / len(train_pairs)))

    def next_batch(generator):  # on several processes, this rank's pairs or rankings of the batch
        if cfg.batching == "pair":
            idx = torch.randint(len(train_pairs), (cfg.batch_size,), generator=generator).tolist()
            return pair_batch(tokenizer, [train_pairs[i] for i in shard(idx)])
        idx = torch.randperm(len(groups), generator=generator)[:prompts_per_batch].tolist()
        return ranking_batch(tokenizer, [groups[i] for i in shard(idx)])

    def units(batch):  # the loss is a mean over pairs
        return len(batch["chosen_index"]) if "chosen_index" in batch else len(batch["input_ids"]) // 2

    def val_loss(m):
        return pairwise_accuracy(m, tokenizer, val_pairs)["loss"] if val_pairs else float("nan")

    return train_loop(model, next_batch, pair_loss if cfg.batching == "pair" else ranking_loss, cfg,
                      val_loss_fn=val_loss, device=device, seed=seed,
                      callback=callback, progress=progress, resume_dir=resume_dir, desc=desc, units=units)


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
                                            left_pad(self.tokenizer, seqs).items()}).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, instructions: list[str], responses: list[str], finished: list[bool] | None = None,
              batch_size: int = 64) -> torch.Tensor:
        """Normalised reward: SFT samples score mean 0, std 1."""
        return (self.raw_scores(instructions, responses, finished, batch_size) - self.mean) / self.std


def reward_model_from(causal_lm_path: Path):
    """A fresh reward model: the causal LM's transformer with a new scalar head (the LM head
    is dropped; Hugging Face's report that `score.weight` is new is expected and silenced), in
    float32 whatever the checkpoint's dtype (`model.load_pretrained` says why)."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(causal_lm_path, num_labels=1, use_safetensors=True,
                                                                   dtype=torch.float32)
    finally:
        logging.set_verbosity(verbosity)
    return model


def load_reward_model(path: Path, device="cpu") -> RewardModel:
    """A reward model saved with `embiggen.lm.training.save_checkpoint`."""
    model, tokenizer, info, log = load_checkpoint(path, device, model_class=AutoModelForSequenceClassification)
    return RewardModel(model, tokenizer, info, log, Path(path))


def fit_reward_model(sft_path: Path, tokenizer, train_pairs: list[Comparison], eval_pairs: list[Comparison],
                     norm_samples: list[dict], cfg: RewardConfig, path: Path, seed: int = 0, progress: bool = True,
                     device=None, desc: str = "reward model") -> RewardModel:
    """A fresh reward model from the SFT weights at `sft_path`, trained on `train_pairs` for
    cfg.steps steps, normalised so that the SFT model's samples in `norm_samples` (training
    prompts) score mean 0, std 1, and evaluated on `eval_pairs`. `path` is where it will be
    saved (its resume point sits beside it); saving is the caller's."""
    started = time.perf_counter()
    set_seed(seed)
    model = reward_model_from(sft_path)
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0 / (model.config.hidden_size + 1) ** 0.5)
    if cfg.optim.lora.rank:  # adapters on the trunk; the new score head trains in full
        add_adapters(model, cfg.optim.lora)

    def record(step, log):  # held-out accuracy at every evaluation, for the notebook's plot
        log.metrics.setdefault("val_accuracy_steps", []).append(step)
        log.metrics.setdefault("val_accuracy", []).append(pairwise_accuracy(model, tokenizer, eval_pairs)["accuracy"])

    log = train_reward_model(model, tokenizer, train_pairs, eval_pairs, cfg, device=device, seed=seed,
                             progress=progress, resume_dir=resume_dir(path), callback=record, desc=desc)
    rm = RewardModel(model.eval(), tokenizer, {}, log, path)
    flat = [(row["instruction"], y, f) for row in norm_samples for y, f in zip(row["samples"], row["finished"])]
    raw = rm.raw_scores([x for x, _, _ in flat], [y for _, y, _ in flat], [f for _, _, f in flat])
    rm.info = normalisation(raw)
    metrics = pairwise_accuracy(model, tokenizer, eval_pairs)
    rm.info.update({"sft": Path(sft_path).name, "n_pairs": len(train_pairs), "n_eval_pairs": len(eval_pairs),
                    "val_accuracy_steps": log.metrics.get("val_accuracy_steps", []),
                    "val_accuracy": log.metrics.get("val_accuracy", []),
                    # training and normalising, with the loop seconds of any interrupted run it resumed
                    "train_seconds": round(time.perf_counter() - started + log.resumed_seconds, 2),
                    "pairwise_accuracy": metrics["accuracy"], "margin": metrics["margin"],
                    "per_type_accuracy": metrics["per_type"], "per_type_count": metrics["per_type_count"],
                    "val_loss": log.val_loss[-1] if log.val_loss else None,
                    "device": str(next(model.parameters()).device)})
    return rm


def normalisation(raw_scores: torch.Tensor) -> dict:
    """The shift and scale that make `raw_scores` (the reward model's scores of SFT samples)
    mean 0 and standard deviation 1 (unbiased; never below 1e-6, so a constant reward model
    does not divide by zero). `RewardModel.score` applies them."""
    if raw_scores.numel() == 0:
        raise ValueError("no samples to normalise the reward model's scores on")
    std = raw_scores.std().item() if raw_scores.numel() > 1 else 0.0  # one sample has no spread
    return {"reward_mean": raw_scores.mean().item(), "reward_std": max(std, 1e-6)}


# ---------------------------------------------------------------------------------------
# Iterated RLHF: new comparisons of the policy's own samples, and a reward model retrained on all
# ---------------------------------------------------------------------------------------
def reward_model_round(policy, tokenizer, sft_path: Path, earlier_pairs: list[Comparison], prompts, held_prompts,
                       labeler: Labeler, cfg: RewardConfig, sampling: dict, seeds: tuple[int, int, int],
                       norm_samples: list[dict], sft_eval_pairs: list[Comparison], path: Path,
                       progress: bool = True, desc: str = "reward model") -> tuple[RewardModel, list, list]:
    """One round of iterated RLHF (InstructGPT's comparisons of PPO policies' samples; Bai et
    al. 2022 online): `labeler` ranks K samples of the current `policy` on fresh `prompts`, and
    a reward model is trained from the SFT weights on `earlier_pairs` plus the new ones (about
    one epoch), normalised on the same SFT samples as the first. Its accuracy on held-out pairs
    of the policy's samples (`held_prompts`, ranked without noise) goes into its info as
    `policy_pairwise_accuracy`. `seeds`: for sampling the new pairs, the held-out pairs, and
    training. Returns (reward model, all its training pairs, the held-out pairs)."""
    k, temperature, max_new_tokens = sampling["k"], sampling["temperature"], sampling["max_new_tokens"]
    written = sampling.get("written", False)
    new = collect_preferences(policy, tokenizer, prompts, labeler, k, temperature, max_new_tokens, seed=seeds[0],
                              written=written, written_refusals=sampling.get("written_refusals", False),
                              written_misreadings=sampling.get("written_misreadings", False))
    held = collect_preferences(policy, tokenizer, held_prompts, Labeler(), k, temperature, max_new_tokens,
                               seed=seeds[1], written=written)
    pairs = earlier_pairs + new.pairs
    rm = fit_reward_model(sft_path, tokenizer, pairs, sft_eval_pairs, norm_samples,
                          replace(cfg, steps=max(1, len(pairs) // cfg.batch_size)), path, seed=seeds[2],
                          progress=progress, desc=desc)
    policy_eval = pairwise_accuracy(rm.model, rm.tokenizer, held.pairs)
    rm.info.update({"new_pairs": len(new.pairs), "policy_pairwise_accuracy": policy_eval["accuracy"],
                    "policy_per_type_accuracy": policy_eval["per_type"]})
    return rm, pairs, held.pairs


def load_pairs(rm: RewardModel, split: str = "eval") -> list[Comparison]:
    """The train or held-out (eval) preference pairs the reward model was built from."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return read_pairs(rm.path / f"{split}_pairs.jsonl")
