"""The loop that SimPO and ORPO share: a loss on preference pairs with no reference model.

The pairs are encoded, packed and given shared prompts as DPO's are (`embiggen.methods.dpo`); each
step computes log pi(y|x) and the number of tokens of every answer of a batch of pairs (chosen
answers first, then the rejected ones) and hands them to the method's loss, which returns the
loss and the two answers' rewards, whatever "reward" means for it (SimPO: the scaled average
log-likelihood; ORPO: lambda times the log odds). What is logged per step is what DPO logs: the
rewards of chosen and rejected answers, their margin, the share of pairs ranked right, and the
log-probabilities of both answers; on held-out pairs, the loss and the accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from embiggen.lm.distributed import shard
from embiggen.lm.training import TrainLog, mixed_precision, train_loop
from embiggen.methods.dpo import DPOData, encode_pairs, evaluate_pairs, sequence_logprobs
from embiggen.methods.ppo import disable_dropout
from embiggen.utils import pick_device


def pair_batch_loss(model, batch: dict, cfg, loss_fn):
    """(loss, response tokens, what to log) of `loss_fn` on one batch of pairs."""
    logp, n_tokens = sequence_logprobs(model, batch, cfg.logprob_chunk)
    loss, rewards = loss_fn(logp, n_tokens, batch, cfg)
    half = logp.shape[0] // 2
    margin = rewards["chosen"] - rewards["rejected"]
    stats = {"reward_chosen": rewards["chosen"].mean().item(), "reward_rejected": rewards["rejected"].mean().item(),
             "reward_margin": margin.mean().item(), "reward_accuracy": (margin > 0).float().mean().item(),
             "logp_chosen": logp[:half].detach().mean().item(), "logp_rejected": logp[half:].detach().mean().item()}
    return loss, n_tokens.sum(), stats


def train_on_pairs(model, tokenizer, train_pairs, eval_pairs, cfg, loss_fn, device=None, seed: int = 0,
                   progress: bool = True, resume_dir: Path | None = None, desc: str = "pairs") -> TrainLog:
    """Fine-tune `model` with `loss_fn(logp, n_tokens, batch, cfg) -> (loss, rewards)` on
    preference pairs, dropout off; cfg has DPO's training knobs (steps, batch_size, optim,
    max_length, packing, share_prompt, logprob_chunk, eval_every). On several processes each rank
    takes its share of every batch's pairs, weighted by pairs (`lm.distributed`)."""
    device = device or pick_device()
    model.to(device)
    disable_dropout(model)
    pad = tokenizer.pad_token_id
    train_enc, eval_enc = (encode_pairs(tokenizer, pairs, cfg.max_length) for pairs in (train_pairs, eval_pairs))
    masks = getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")  # shared prompts need 4D masks
    no_reference = torch.zeros(0, 2)
    train = DPOData(train_enc, no_reference.new_zeros(len(train_enc), 2), pad, cfg.max_length if cfg.packing else 0,
                    cfg.packing and cfg.share_prompt and masks)
    held = DPOData(eval_enc, no_reference.new_zeros(len(eval_enc), 2), pad)
    latest: dict = {}

    def next_batch(generator):  # on several processes, this rank's pairs of the batch
        return train.batch(shard(torch.randint(len(train.encoded), (cfg.batch_size,), generator=generator).tolist()))

    def held_out_loss(m):
        with mixed_precision(cfg.optim, device):
            latest.update(evaluate_pairs(m, held, cfg, batch_loss_fn=lambda model, batch: pair_batch_loss(
                model, batch, cfg, loss_fn)))
        return latest["loss"]

    def record(step, log):
        for key in ("reward_accuracy", "reward_margin"):
            log.metrics.setdefault(f"val_{key}", []).append(latest[key])

    return train_loop(model, next_batch, lambda m, batch: pair_batch_loss(m, batch, cfg, loss_fn), cfg,
                      val_loss_fn=held_out_loss if held.encoded else None, device=device, seed=seed,
                      callback=record if held.encoded else None, progress=progress, resume_dir=resume_dir, desc=desc,
                      units=lambda batch: len(batch["ref_logps"]))
