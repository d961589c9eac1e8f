"""Step 3, without a reward model: direct preference optimisation (DPO).

Rafailov et al. (2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", https://arxiv.org/abs/2305.18290) start from the same two pieces as RLHF: the
Bradley-Terry model of preferences,

    P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)),

and the KL-regularised objective that PPO maximises, max_pi E[r(x, y)] - beta KL(pi || pi_ref).
That objective has a closed-form optimum, pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x),
so every reward defines a policy and, turned around, every policy defines a reward:

    r(x, y) = beta log( pi(y|x) / pi_ref(y|x) ) + beta log Z(x).

Put that reward into Bradley-Terry and Z(x) cancels (both answers share the prompt). What is
left is a classification loss on the preference pairs, with the policy itself as the reward
model — no reward model to train, no sampling, no value head:

    L_DPO = - log sigma( beta [ (log pi(y_w|x) - log pi_ref(y_w|x))
                               - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

log pi(y|x) is the sum of the response tokens' log-probabilities (the prompt is masked, as
in SFT); pi_ref is the frozen SFT model, whose log-probabilities are computed once, before
training. beta (log pi - log pi_ref) is the *implicit reward*; its margin between chosen and
rejected is what DPO raises. Two variants, one switch each: IPO (Azar et al. 2023,
https://arxiv.org/abs/2310.12036) regresses the margin to 1 / (2 beta) instead of pushing it
without bound, its log-ratios taken per token (the mean over the answer's tokens, as TRL does
after confirming it with IPO's authors: summed, a long answer's margin dwarfs the target);
and *length-normalised DPO* compares mean log-probabilities per token too, so that longer
answers are not favoured for being longer. (It keeps the reference model and has no target
margin, so it is not SimPO, Meng et al. 2024, which drops both.)

A batch's sequences are packed several to a row (position ids restart at 0 for each, so none
attends to another, as in SFT's packing): short answers waste no compute on padding. And the
two answers of a pair share their prompt, so it is written once, both answers after it, an
attention mask keeping each answer from seeing the other (`shared_prompt_segment`): the
prompt's tokens are computed once instead of twice, with the very same log-probabilities.

What TRL users watch, and what `train_dpo` logs per step: the implicit rewards of chosen and
rejected answers, their margin, the share of pairs whose margin is positive, and the policy's
log-probabilities of both answers. Both log-probabilities falling while the margin grows is
DPO's known failure mode (the policy moves probability to answers that are in neither set).

DPO learns from pairs of someone else's answers (here the SFT model's): it is *offline*. Its
online counterpart, iterated DPO (e.g. Xiong et al. 2024, https://arxiv.org/abs/2312.11456;
Guo et al. 2024, https://arxiv.org/abs/2402.04792), lets the policy answer fresh prompts
between rounds, has the labeler rank those answers, and trains the next round on them —
the counterpart of iterated RLHF. One switch, `DPOConfig.rounds`; the rounds are driven by
`embiggen.chain.train_or_load_dpo`, each round with this module's `train_dpo`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from embiggen.lm.distributed import shard
from embiggen.lm.lora import adapters_disabled, add_adapters, has_adapters
from embiggen.lm.training import TrainLog, mixed_precision, train_loop
from embiggen.methods.ppo import disable_dropout
from embiggen.methods.sft import IGNORE_INDEX, SFTData, batch_loss, chunked_token_nll, encode_example, pad_batch
from embiggen.presets import DPOConfig
from embiggen.utils import pick_device


# ---------------------------------------------------------------------------------------
# Encoding: a pair is two SFT examples of one prompt
# ---------------------------------------------------------------------------------------
def encode_response(tokenizer, prompt: str, response: str, finished: bool = True, max_length: int = 256) -> dict:
    """Chat prompt + response, labels -100 on the prompt. An answer that never ended (cut off
    at the length limit) gets no end-of-sequence token it never wrote."""
    encoded = encode_example(tokenizer, prompt, response, max_length)
    if not finished and encoded["labels"] and encoded["labels"][-1] == tokenizer.eos_token_id:
        encoded = {k: v[:-1] for k, v in encoded.items()}
    return encoded


def encode_pairs(tokenizer, pairs, max_length: int = 256) -> list[tuple[dict, dict]]:
    return [(encode_response(tokenizer, p.prompt, p.chosen, p.chosen_finished, max_length),
             encode_response(tokenizer, p.prompt, p.rejected, p.rejected_finished, max_length)) for p in pairs]


def pair_rows(encoded: list[tuple[dict, dict]], pad_token_id: int, pack_length: int = 0,
              share_prompt: bool = False) -> dict:
    """One batch of the pairs' sequences: the chosen answers first, then the rejected ones.
    Right-padded, one sequence per row; or, with `pack_length`, packed several to a row of that
    many tokens, position ids restarting at 0 for each sequence so that none attends to another
    (the mechanism of SFT's packing), with `sequence` giving each token's sequence (-1: padding).
    Packing skips the padding a batch of short and long answers would otherwise compute on.
    With `share_prompt` too, each pair's prompt is written once (`shared_prompt_segment`)."""
    if pack_length and share_prompt:
        return pack_segments([shared_prompt_segment(c, r, i, len(encoded)) for i, (c, r) in enumerate(encoded)],
                             pad_token_id, pack_length)
    sequences = [c for c, _ in encoded] + [r for _, r in encoded]
    if not pack_length:
        return pad_batch(sequences, pad_token_id)
    segments = [{**seq, "position_ids": list(range(len(seq["input_ids"]))), "sequence": [i] * len(seq["input_ids"])}
                for i, seq in enumerate(sequences)]
    return pack_segments(segments, pad_token_id, pack_length)


def shared_prompt_segment(chosen: dict, rejected: dict, i: int, n_pairs: int) -> dict:
    """Pair `i` as one segment that holds its prompt once: the prompt but its last token, then
    that token and the chosen answer, then that token again and the rejected answer, each
    answer continuing the prompt's positions. `branch` (0 prompt, 1 chosen, 2 rejected) lets
    `attention_mask` hide each answer from the other, so each token sees exactly what it would
    see in its own sequence; the repeated last prompt token predicts each answer's first token.
    Our answers are short beside their prompts, so this nearly halves a batch's tokens."""
    n = sum(label == IGNORE_INDEX for label in chosen["labels"])  # the prompt's tokens (its labels are -100)
    if n < 1 or chosen["input_ids"][:n] != rejected["input_ids"][:n]:
        raise ValueError(f"pair {i}: the chosen and rejected sequences do not start with the same prompt")
    prompt, branches = chosen["input_ids"][: n - 1], [chosen, rejected]
    ids = prompt + [t for seq in branches for t in seq["input_ids"][n - 1:]]
    labels = [IGNORE_INDEX] * (n - 1) + [t for seq in branches for t in seq["labels"][n - 1:]]
    positions = list(range(n - 1)) + [p for seq in branches for p in range(n - 1, len(seq["input_ids"]))]
    sizes = [len(seq["input_ids"]) - n + 1 for seq in branches]
    branch = [0] * (n - 1) + [1] * sizes[0] + [2] * sizes[1]
    owner = [i] * (n - 1 + sizes[0]) + [n_pairs + i] * sizes[1]  # chosen answers first, then the rejected ones
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "sequence": owner, "branch": branch}


def pack_segments(segments: list[dict], pad_token_id: int, pack_length: int) -> dict:
    """Segments (token lists with their labels, positions, owners) packed greedily into rows of
    at most `pack_length` tokens (a longer segment gets a row of its own), padded to the longest
    row. Segments with a `branch` also get the attention mask that keeps branches apart."""
    rows, current, used = [], [], 0
    for segment in segments:
        if current and used + len(segment["input_ids"]) > pack_length:
            rows.append(current)
            current, used = [], 0
        current.append(segment)
        used += len(segment["input_ids"])
    rows.append(current)
    width = max(sum(len(s["input_ids"]) for s in row) for row in rows)
    pads = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "sequence": -1, "branch": -1}
    batch = {key: [] for key in segments[0]} | {"segment": []}
    for row in rows:
        pad = width - sum(len(s["input_ids"]) for s in row)
        for key in segments[0]:
            filler = list(range(pad)) if key == "position_ids" else [pads[key]] * pad
            batch[key].append([t for s in row for t in s[key]] + filler)
        batch["segment"].append([k for k, s in enumerate(row) for _ in s["input_ids"]] + [-1] * pad)
    out = {key: torch.tensor(value) for key, value in batch.items()}
    out["n_sequences"] = torch.tensor(2 * len(segments) if "branch" in segments[0] else len(segments))
    if "branch" in out:
        out["attention_mask"] = branch_mask(out.pop("segment"), out.pop("branch"))
    else:
        out.pop("segment")
    return out


def branch_mask(segment: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """(rows, 1, T, T) booleans, True where query token q may attend to key token k: k is not
    after q, both are of the same segment, and k is the shared prompt or of q's own branch.
    A padding token attends to itself only."""
    t = torch.arange(segment.shape[1])
    causal = t[None, :, None] >= t[None, None, :]
    same = segment[:, :, None] == segment[:, None, :]
    visible = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    padding = (segment < 0)[:, :, None] & torch.eye(len(t), dtype=torch.bool)[None]
    return ((causal & same & visible & (segment >= 0)[:, :, None]) | padding)[:, None]


# ---------------------------------------------------------------------------------------
# Log-probabilities of whole answers, and the loss
# ---------------------------------------------------------------------------------------
def sequence_logprobs(model, batch: dict, logprob_chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y|x) = sum over response tokens of log pi(y_t | x, y_<t), one per sequence, and
    the number of response tokens of each (a padded batch: one sequence per row; a packed one:
    `batch["sequence"]` says whose each token is). `logprob_chunk`: see `sft.chunked_token_nll`."""
    packed = "sequence" in batch
    inputs = ({"position_ids": batch["position_ids"]} if packed else {"attention_mask": batch["attention_mask"]})
    if packed and "attention_mask" in batch:  # shared prompts: who may see whom, as an additive (0 / -inf) mask
        dtype = next(model.parameters()).dtype
        inputs["attention_mask"] = torch.zeros(batch["attention_mask"].shape, dtype=dtype,
                                               device=batch["input_ids"].device).masked_fill(
            ~batch["attention_mask"], torch.finfo(dtype).min)
    labels = batch["labels"][:, 1:]                           # position t predicts token t + 1
    mask = labels != IGNORE_INDEX                             # a sequence's first label is its prompt: -100
    if logprob_chunk:
        token_logp = -chunked_token_nll(model, {"input_ids": batch["input_ids"], **inputs}, batch["labels"],
                                        logprob_chunk)
    else:
        logits = model(input_ids=batch["input_ids"], use_cache=False, **inputs).logits[:, :-1]
        # log pi(y_t | ...) = -cross-entropy of the label (one fused kernel, no (B, T, V) log-prob tensor kept)
        token_logp = -F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none") * mask
    if not packed:
        return token_logp.sum(-1), mask.sum(-1)
    owner = batch["sequence"][:, 1:].clamp(min=0).reshape(-1)  # padding (-1) carries no label anyway
    n = int(batch["n_sequences"])
    sums = torch.zeros(n, device=token_logp.device).index_add(0, owner, token_logp.reshape(-1))
    counts = torch.zeros(n, dtype=torch.long, device=mask.device).index_add(0, owner, mask.reshape(-1).long())
    return sums, counts


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid") -> tuple[torch.Tensor, dict]:
    """The DPO loss (or IPO's) of a batch of pairs, from log pi(y|x) of each answer under the
    policy and under the reference. Returns the mean loss and the implicit rewards
    beta (log pi - log pi_ref) of the chosen and rejected answers."""
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    margin = chosen_logratio - rejected_logratio                 # how much more the policy moved towards y_w
    if loss_type == "sigmoid":                                   # DPO: Bradley-Terry on the implicit reward
        losses = -F.logsigmoid(beta * margin)
    elif loss_type == "ipo":                                     # IPO: the (per-token) margin regressed to 1 / (2 beta)
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: 'sigmoid' (DPO), 'ipo'")
    rewards = {"chosen": beta * chosen_logratio.detach(), "rejected": beta * rejected_logratio.detach()}
    return losses.mean(), rewards


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def reference_logprobs(ref_model, encoded: list[tuple[dict, dict]], pad_token_id: int, device,
                       batch_size: int = 64, logprob_chunk: int = 0) -> torch.Tensor:
    """log pi_ref(y|x) of every chosen and rejected answer, shape (pairs, 2): computed once,
    so the reference model need not stay in memory while the policy trains."""
    ref_model.eval()
    out = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i: i + batch_size]
        batch = {k: v.to(device) for k, v in pair_rows(chunk, pad_token_id).items()}
        logp, _ = sequence_logprobs(ref_model, batch, logprob_chunk)
        out.append(torch.stack([logp[: len(chunk)], logp[len(chunk):]], dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 2)


@dataclass
class DPOData:
    """Encoded pairs, their reference log-probabilities, and how to draw a batch."""
    encoded: list[tuple[dict, dict]]
    ref_logps: torch.Tensor   # (pairs, 2): log pi_ref of the chosen and the rejected answer
    pad_token_id: int
    pack_length: int = 0      # > 0: pack the sequences into rows of this many tokens
    share_prompt: bool = False  # ... each pair's prompt written once (`shared_prompt_segment`)

    def __post_init__(self):  # response tokens of each answer, for the length-normalised margin
        self.n_tokens = torch.tensor([[sum(t != IGNORE_INDEX for t in e["labels"]) for e in pair]
                                      for pair in self.encoded]).reshape(-1, 2)

    def batch(self, idx: list[int]) -> dict:
        rows = pair_rows([self.encoded[i] for i in idx], self.pad_token_id, self.pack_length, self.share_prompt)
        return {**rows, "ref_logps": self.ref_logps[idx], "ref_tokens": self.n_tokens[idx]}


def dpo_batch_loss(model, batch: dict, cfg: DPOConfig, demonstrations: dict | None = None):
    """(loss, response tokens, what to log) for one batch of pairs; with `demonstrations` (a
    batch of SFT task examples) and cfg.ptx_coef > 0, plus ptx_coef times their SFT loss."""
    logp, n_tokens = sequence_logprobs(model, batch, cfg.logprob_chunk)
    if cfg.length_normalize or cfg.loss_type == "ipo":  # the mean log-probability per response token
        logp = logp / n_tokens.clamp(min=1)
        ref = batch["ref_logps"] / batch["ref_tokens"].clamp(min=1)
    else:
        ref = batch["ref_logps"]
    half = logp.shape[0] // 2
    loss, rewards = dpo_loss(logp[:half], logp[half:], ref[:, 0], ref[:, 1], cfg.beta, cfg.loss_type)
    margin = rewards["chosen"] - rewards["rejected"]
    stats = {"reward_chosen": rewards["chosen"].mean().item(), "reward_rejected": rewards["rejected"].mean().item(),
             "reward_margin": margin.mean().item(), "reward_accuracy": (margin > 0).float().mean().item(),
             "logp_chosen": logp[:half].detach().mean().item(), "logp_rejected": logp[half:].detach().mean().item()}
    if demonstrations is not None and cfg.ptx_coef > 0:  # keep the answers of the task clusters (cf. PPO-ptx)
        ptx_loss = batch_loss(model, demonstrations)[0]
        stats["ptx_loss"] = ptx_loss.item()
        loss = loss + cfg.ptx_coef * ptx_loss
    return loss, n_tokens.sum(), stats


@torch.no_grad()
def evaluate_pairs(model, data: DPOData, cfg: DPOConfig, batch_size: int = 64, batch_loss_fn=None) -> dict:
    """The DPO loss and the implicit-reward accuracy and margin over every pair of `data`; with
    `batch_loss_fn(model, batch)`, another pair loss's (its loss, tokens and stats, as
    `dpo_batch_loss` returns them: SimPO's, ORPO's)."""
    batch_loss_fn = batch_loss_fn or (lambda m, batch: dpo_batch_loss(m, batch, cfg))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = {"loss": 0.0, "reward_accuracy": 0.0, "reward_margin": 0.0}
    for i in range(0, len(data.encoded), batch_size):
        idx = list(range(i, min(i + batch_size, len(data.encoded))))
        loss, _, stats = batch_loss_fn(model, {k: v.to(device) for k, v in data.batch(idx).items()})
        for key, value in (("loss", loss.item()), ("reward_accuracy", stats["reward_accuracy"]),
                           ("reward_margin", stats["reward_margin"])):
            total[key] += value * len(idx)
    model.train(was_training)
    n = max(1, len(data.encoded))
    return {k: v / n for k, v in total.items()}


def train_dpo(model, ref_model, tokenizer, train_pairs, eval_pairs, cfg: DPOConfig, device=None, seed: int = 0,
              progress: bool = True, resume_dir: Path | None = None, desc: str = "dpo",
              ptx_data: SFTData | None = None) -> TrainLog:
    """Fine-tune `model` (a copy of the SFT model) with the DPO loss on preference pairs; the
    reference log-probabilities come from `ref_model` (the SFT model), once. The log holds the
    held-out DPO loss as `val_loss` and, per step, the implicit rewards, their margin and
    accuracy, and the log-probabilities of chosen and rejected answers (`log.metrics`). With
    cfg.ptx_coef > 0, `ptx_data` (SFT task demonstrations) adds their SFT loss to every step.
    With cfg.optim.lora.rank > 0 only low-rank adapters train, and `ref_model=None` makes the
    reference `model` itself with its adapters switched off (no second copy of the weights)."""
    if cfg.ptx_coef > 0 and ptx_data is None:
        raise ValueError("ptx_coef > 0 needs ptx_data (demonstrations to keep the language-model loss on)")
    device = device or pick_device()
    if cfg.optim.lora.rank:
        add_adapters(model.to(device), cfg.optim.lora)
    if ref_model is None and not has_adapters(model):
        raise ValueError("ref_model=None needs LoRA (cfg.optim.lora.rank > 0): the reference is then the model "
                         "with its adapters off")
    reference = adapters_disabled(model) if ref_model is None else nullcontext(ref_model.to(device))
    disable_dropout(model)  # the implicit reward log pi/pi_ref is 0 before the first step, not dropout noise
    pad = tokenizer.pad_token_id
    train_enc, eval_enc = (encode_pairs(tokenizer, pairs, cfg.max_length) for pairs in (train_pairs, eval_pairs))
    # a shared prompt needs an attention that takes a custom (4D) mask: sdpa and eager do, flash-attention does not
    masks = getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")
    with reference as ref, mixed_precision(cfg.optim, device):  # as the policy's: pi / pi_ref starts at 1
        disable_dropout(ref)
        ref_logps = [reference_logprobs(ref, enc, pad, device, logprob_chunk=cfg.logprob_chunk)
                     for enc in (train_enc, eval_enc)]
    train = DPOData(train_enc, ref_logps[0], pad, cfg.max_length if cfg.packing else 0,
                    cfg.packing and cfg.share_prompt and masks)
    held = DPOData(eval_enc, ref_logps[1], pad)
    latest: dict = {}

    def next_batch(generator):  # on several processes, this rank's pairs of the batch
        batch = train.batch(shard(torch.randint(len(train.encoded), (cfg.batch_size,), generator=generator).tolist()))
        if cfg.ptx_coef > 0:
            batch.update({f"ptx_{k}": v for k, v in ptx_data.next_batch(generator).items()})
        return batch

    def loss_fn(m, batch):
        demonstrations = {k[4:]: v for k, v in batch.items() if k.startswith("ptx_")} or None
        return dpo_batch_loss(m, {k: v for k, v in batch.items() if not k.startswith("ptx_")}, cfg, demonstrations)

    def held_out_loss(m):
        with mixed_precision(cfg.optim, device):
            latest.update(evaluate_pairs(m, held, cfg))
        return latest["loss"]

    def record(step, log):  # the held-out accuracy and margin of the evaluation just run
        for key in ("reward_accuracy", "reward_margin"):
            log.metrics.setdefault(f"val_{key}", []).append(latest[key])

    return train_loop(model, next_batch, loss_fn, cfg,
                      val_loss_fn=held_out_loss if held.encoded else None, device=device, seed=seed,
                      callback=record if held.encoded else None, progress=progress, resume_dir=resume_dir, desc=desc,
                      units=lambda batch: len(batch["ref_logps"]))  # DPO's loss is a mean over pairs
