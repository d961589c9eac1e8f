"""The training loop every stage shares: AdamW, warmup + cosine schedule, clipping, evaluation, resume.

Pretraining and supervised fine-tuning differ only in how a batch is drawn and which loss
is minimised; both are arguments here. The loop itself is the plain recipe of nanoGPT:

    for step in range(steps):
        lr = warmup-then-cosine(step)
        loss = loss_fn(model, next_batch())
        loss.backward(); clip gradients; optimizer.step()
        every eval_every steps: validation loss, progress bar, resume point
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .utils import atomic_dir, pick_device


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    #: more curves a callback records, by name (e.g. the reward model's held-out accuracy);
    #: they are saved with every resume point, so an interrupted run keeps them too
    metrics: dict[str, list[float]] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def lr_at(step: int, cfg) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def optimizer_step(model, optimizer, loss: torch.Tensor, grad_clip: float) -> None:
    """Gradients, clipping, update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def optimizer_state_tensors(optimizer) -> dict:
    """AdamW's per-parameter state as flat tensors ("<param index>.<name>"), for safetensors."""
    out = {}
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        for name, value in optimizer.state.get(p, {}).items():
            out[f"{i}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return out


def restore_optimizer_state(optimizer, tensors: dict) -> None:
    params = optimizer.param_groups[0]["params"]
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        p = params[int(i)]
        optimizer.state[p][name] = value.to(p.device) if name != "step" else value


def _save_resume_point(folder: Path, model, optimizer, generator, step: int, log: TrainLog) -> None:
    """Everything needed to continue after an interruption, as safetensors plus JSON."""
    with atomic_dir(folder) as tmp:
        tied = getattr(model.config, "tie_word_embeddings", False)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                   if not (tied and k == "lm_head.weight")}, str(tmp / "model.safetensors"))
        opt = {**optimizer_state_tensors(optimizer), "generator_state": generator.get_state()}
        save_file(opt, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "log": asdict(log)}))


def _load_resume_point(folder: Path, model, optimizer, generator):
    state = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    opt = load_file(str(folder / "optimizer.safetensors"))
    generator.set_state(opt.pop("generator_state"))
    restore_optimizer_state(optimizer, opt)
    return state["step"], TrainLog(**state["log"])


def train_loop(model, next_batch, loss_fn, cfg, val_loss_fn=None, device=None, seed: int = 0, callback=None,
               progress: bool = True, resume_dir: Path | None = None, desc: str = "train") -> TrainLog:
    """Train `model` for cfg.steps steps and return the loss curves.

    next_batch(generator) -> dict of tensors; loss_fn(model, batch) -> (loss, n_tokens);
    val_loss_fn(model) -> float, run every cfg.eval_every steps. `callback(step, log)` runs
    after each evaluation (for live plots, or to record more curves in `log.metrics`). With
    `resume_dir`, a resume point is written at every evaluation and picked up by the next
    call, so an interrupted run continues where it stopped and ends with the same weights
    as an uninterrupted one."""
    device = device or pick_device()
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    step, log = 0, TrainLog()
    if resume_dir is not None and (Path(resume_dir) / "state.json").exists():
        step, log = _load_resume_point(Path(resume_dir), model, optimizer, generator)
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not progress, leave=True)
    start = time.perf_counter() - log.seconds
    while step < cfg.steps:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = {k: v.to(device) for k, v in next_batch(generator).items()}
        loss, n_tokens = loss_fn(model, batch)
        optimizer_step(model, optimizer, loss, cfg.grad_clip)
        step += 1
        log.steps.append(step)
        log.train_loss.append(loss.item())
        log.lr.append(lr)
        log.tokens += int(n_tokens)
        if not math.isfinite(log.train_loss[-1]):
            raise FloatingPointError(f"training loss became {log.train_loss[-1]} at step {step}; "
                                     f"try a lower learning rate than {cfg.lr}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            log.seconds = time.perf_counter() - start
            if val_loss_fn is not None:
                log.val_steps.append(step)
                log.val_loss.append(val_loss_fn(model))
                bar.set_postfix(train=f"{log.train_loss[-1]:.3f}", val=f"{log.val_loss[-1]:.3f}")
            if callback is not None:  # first, so that what it records goes into the resume point
                callback(step, log)
            if resume_dir is not None and step < cfg.steps:
                _save_resume_point(Path(resume_dir), model, optimizer, generator, step, log)
        bar.update(1)
    bar.close()
    log.seconds = time.perf_counter() - start
    model.eval()
    return log
