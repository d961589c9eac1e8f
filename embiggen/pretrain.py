"""Step 1 — a language model is autocomplete: pretraining from scratch.

A causal language model learns p(x_t | x_<t) by minimising the cross-entropy of the next
token over a corpus (Radford et al. 2018/2019; Brown et al. 2020, "Language Models are
Few-Shot Learners", https://arxiv.org/abs/2005.14165):

    L(theta) = - 1/T * sum_t log p_theta(x_t | x_<t)

The loop below is the plain recipe of nanoGPT: random windows of the token stream,
AdamW, linear warmup then cosine decay of the learning rate, gradient clipping, and a
periodic estimate of the loss on held-out text. `train_or_load_base` wraps it with the
embedded world and a cache, so every notebook can ask for "the base model" and get it in
seconds once it has been trained.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .model import build_model, count_params, is_cached, load_checkpoint, resume_dir, save_checkpoint
from .presets import ModelConfig, PretrainConfig, Preset, get_preset
from .splits import build_world
from .tokenizer import train_tokenizer
from .training import TrainLog, train_loop
from .utils import cache_root, config_key, pick_device, set_seed
from .world import WORLD_VERSION, World


# ---------------------------------------------------------------------------------------
# Data: the world's corpus as one long stream of token ids
# ---------------------------------------------------------------------------------------
def build_corpus(preset: Preset, world: World) -> tuple[list[str], list[str]]:
    """Training and validation documents: the same world, different random documents."""
    return (world.pretraining_corpus(preset.train_documents, seed=0),
            world.pretraining_corpus(preset.val_documents, seed=1))


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
             resume_dir: Path | None = None, desc: str = "pretrain") -> TrainLog:
    """Minimise the next-token loss on random windows of `train_data` for cfg.steps steps.

    The loop (AdamW, warmup + cosine, clipping, resume) is `embiggen.training.train_loop`."""
    device = device or pick_device()

    def next_batch(generator):
        x, y = get_batch(train_data, cfg.batch_size, cfg.seq_len, generator)
        return {"x": x, "y": y}

    def loss_fn(model, batch):
        return next_token_loss(model, batch["x"], batch["y"]), batch["x"].numel()

    return train_loop(model, next_batch, loss_fn, cfg, val_loss_fn=lambda m: estimate_loss(m, val_data, cfg, device),
                      device=device, seed=seed, callback=callback, progress=progress, resume_dir=resume_dir,
                      desc=desc)


# ---------------------------------------------------------------------------------------
# The embedded base model, trained once and cached
# ---------------------------------------------------------------------------------------
@dataclass
class BaseModel:
    """The pretrained base model with everything needed to use and evaluate it."""
    model: object
    tokenizer: object
    world: World
    preset: Preset
    log: TrainLog
    info: dict
    path: Path

    @property
    def params(self) -> int:
        return count_params(self.model)


def base_cache_dir(preset: Preset, model_cfg: ModelConfig | None = None, steps: int | None = None) -> Path:
    model_cfg = model_cfg or preset.model
    steps = preset.pretrain.steps if steps is None else steps
    key = config_key("base", WORLD_VERSION, preset.seed, preset.n_people, preset.n_unknown, preset.max_operand,
                     preset.train_documents, preset.val_documents, preset.vocab_size,
                     asdict(model_cfg), asdict(preset.pretrain), steps)
    return cache_root() / "base" / f"{preset.name}-seed{preset.seed}-{key}"


def train_or_load_base(preset: str | Preset | None = None, model_cfg: ModelConfig | None = None,
                       steps: int | None = None, force: bool = False, progress: bool = True,
                       callback=None, device=None) -> BaseModel:
    """Load the cached base model for `preset`, or train it (and cache it) if there is none.

    `model_cfg` and `steps` override the preset's model shape and step count (the
    notebook's "size matters" sweep uses them)."""
    preset = get_preset(preset)
    model_cfg = model_cfg or preset.model
    cfg = preset.pretrain if steps is None else PretrainConfig(**{**asdict(preset.pretrain), "steps": steps})
    device = device or pick_device()
    world = build_world(preset)
    path = base_cache_dir(preset, model_cfg, cfg.steps)
    if is_cached(path) and not force:
        model, tokenizer, info, log = load_checkpoint(path, device)
        return BaseModel(model, tokenizer, world, preset, log, info, path)

    started = time.perf_counter()
    set_seed(preset.seed)
    train_docs, val_docs = build_corpus(preset, world)
    tokenizer = train_tokenizer(train_docs, preset.vocab_size)
    train_data, val_data = tokenize_corpus(tokenizer, train_docs), tokenize_corpus(tokenizer, val_docs)
    model = build_model(model_cfg, tokenizer, seed=preset.seed)
    log = pretrain(model, train_data, val_data, cfg, device=device, seed=preset.seed, callback=callback,
                   progress=progress, resume_dir=resume_dir(path), desc=f"pretrain {preset.name}")
    info = {
        "preset": preset.name, "seed": preset.seed, "params": count_params(model),
        "corpus_tokens": len(train_data), "val_tokens": len(val_data),
        "train_tokens": log.tokens, "train_seconds": round(time.perf_counter() - started, 2),
        "loop_seconds": round(log.seconds, 2), "tokens_per_second": round(log.tokens_per_second, 1),
        "val_loss": log.val_loss[-1], "model_config": asdict(model_cfg), "device": str(device),
    }
    save_checkpoint(path, model, tokenizer, info, log)
    return BaseModel(model.eval(), tokenizer, world, preset, log, info, path)


def size_sweep(preset: str | Preset | None = None, progress: bool = True, device=None) -> list[dict]:
    """"Size matters": the preset's smaller model shapes and its own, all trained with the
    same data and recipe; validation loss and fact recall for each (Kaplan et al. 2020,
    https://arxiv.org/abs/2001.08361, found loss falls as a power law in parameters)."""
    from .evaluate import fact_cloze

    preset = get_preset(preset)
    rows = []
    for cfg in (*preset.size_sweep, preset.model):
        base = train_or_load_base(preset, model_cfg=cfg, progress=progress, device=device)
        rows.append({
            "hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers, "params": base.params,
            "val_loss": base.log.val_loss[-1],
            "fact_cloze_accuracy": fact_cloze(base.model, base.tokenizer, base.world.people)["accuracy"],
            "train_seconds": base.info["train_seconds"],
        })
    return rows
