"""Step 1 — a language model is autocomplete: pretraining from scratch.

A causal language model learns p(x_t | x_<t) by minimising the cross-entropy of the next
token over a corpus (Radford et al. 2018/2019; Brown et al. 2020, "Language Models are
Few-Shot Learners", https://arxiv.org/abs/2005.14165):

    L(theta) = - 1/T * sum_t log p_theta(x_t | x_<t)

The loop below is the plain recipe of nanoGPT: random windows of the token stream,
AdamW, linear warmup then cosine decay of the learning rate, gradient clipping, and a
periodic estimate of the loss on held-out text. `embiggen.chain.train_or_load_base` wraps it
with the embedded world and the cache, so every notebook can ask for "the base model" and get
it in seconds once it has been trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from embiggen.lm.distributed import shard_rows
from embiggen.lm.generate import generate
from embiggen.lm.training import TrainLog, train_loop
from embiggen.presets import PretrainConfig
from embiggen.utils import pick_device

#: how many tokens of each sample prompt's continuation pretraining records at an evaluation
SAMPLE_TOKENS = 16


# ---------------------------------------------------------------------------------------
# Data: the world's corpus as one long stream of token ids
# ---------------------------------------------------------------------------------------
def tokenize_corpus(tokenizer, documents: list[str]) -> torch.Tensor:
    """Concatenate documents into one 1-D tensor of ids, each document followed by EOS."""
    ids: list[int] = []
    for enc in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """Random windows x and the same windows shifted by one token, y (the targets)."""
    starts = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=generator)
    x = torch.stack([data[s: s + seq_len] for s in starts.tolist()])
    y = torch.stack([data[s + 1: s + seq_len + 1] for s in starts.tolist()])
    return x, y


def next_token_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting y[t] from x[<=t]."""
    logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


@torch.no_grad()
def estimate_loss(model, data: torch.Tensor, cfg: PretrainConfig, device) -> float:
    """Mean loss over the first eval_batches * batch_size non-overlapping windows of `data`
    (always the same windows, so successive estimates are comparable)."""
    was_training = model.training
    model.eval()
    n = min(cfg.eval_batches * cfg.batch_size, (len(data) - 1) // cfg.seq_len)
    if n < 1:
        raise ValueError(f"validation data has {len(data)} tokens, fewer than one window of {cfg.seq_len + 1}")
    starts = torch.arange(n) * cfg.seq_len
    losses = []
    for chunk in starts.split(cfg.batch_size):
        x = torch.stack([data[s: s + cfg.seq_len] for s in chunk.tolist()]).to(device)
        y = torch.stack([data[s + 1: s + cfg.seq_len + 1] for s in chunk.tolist()]).to(device)
        losses.append(next_token_loss(model, x, y).item() * len(chunk))
    model.train(was_training)
    return sum(losses) / n


# ---------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------
def pretrain(model, train_data: torch.Tensor, val_data: torch.Tensor, cfg: PretrainConfig,
             device=None, seed: int = 0, callback=None, progress: bool = True,
             resume_dir: Path | None = None, desc: str = "pretrain", tokenizer=None,
             sample_prompts: tuple[str, ...] = ()) -> TrainLog:
    """Minimise the next-token loss on random windows of `train_data` for cfg.steps steps.

    The loop (AdamW, warmup + cosine, clipping, resume) is `embiggen.lm.training.train_loop`.
    With `tokenizer` and `sample_prompts`, every evaluation also records the model's greedy
    continuation of each prompt in `log.samples`, so the text can be watched getting better;
    the random state is set aside while it writes, so recording them changes no weight."""
    device = device or pick_device()
    if sample_prompts and tokenizer is None:
        raise ValueError("sample_prompts needs the tokenizer to write them with")

    def on_evaluation(step, log):
        if sample_prompts:
            with torch.random.fork_rng(devices=[]):
                texts = generate(model, tokenizer, list(sample_prompts), max_new_tokens=SAMPLE_TOKENS)
            for prompt, text in zip(sample_prompts, texts):
                log.samples.setdefault(prompt, []).append(text)
        if callback is not None:
            callback(step, log)

    def next_batch(generator):
        x, y = get_batch(train_data, cfg.batch_size, cfg.seq_len, generator)
        return shard_rows({"x": x, "y": y})  # on several processes, this rank's windows

    def loss_fn(model, batch):
        return next_token_loss(model, batch["x"], batch["y"]), batch["x"].numel()

    return train_loop(model, next_batch, loss_fn, cfg, val_loss_fn=lambda m: estimate_loss(m, val_data, cfg, device),
                      device=device, seed=seed, callback=on_evaluation, progress=progress, resume_dir=resume_dir,
                      desc=desc)
