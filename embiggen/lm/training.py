"""What every stage shares: the optimiser and its schedule, the training loop, resume points, the cache.

Pretraining, supervised fine-tuning and the reward model differ only in how a batch is drawn
and which loss is minimised; both are arguments of `train_loop`, the plain recipe of nanoGPT:

    for step in range(steps):
        lr = warmup-then-cosine(step)
        loss = loss_fn(model, next_batch())
        loss.backward(); clip gradients; optimizer.step()
        every eval_every steps: validation loss, progress bar, resume point

PPO has its own loop (a rollout, then epochs of minibatches) but the same optimiser, the same
optimiser step and the same resume points. Every stage caches its model the same way too:
`train_or_load(path, load, train)` — one folder per trained model, named by a hash of the
training configuration (`cache_dir`), written atomically, with a resume point beside it while
training runs, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import contextvars
import json
import math
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from embiggen.errors import UserError
from embiggen.lm.distributed import (all_reduce_gradients, all_reduce_sum, barrier, broadcast_flag, clip_gradients,
                                     full_tensor, gather_weights, is_sharded, is_slice, is_split, like, resharded,
                                     shard_weights, sharded_adamw, shards_optimizer, world_size)
from embiggen.lm.lora import has_adapters, merge_adapters, save_adapters
from embiggen.presets import LoRAConfig, OptimConfig, Preset
from embiggen.utils import (CacheReadOnly, EntryLoadError, atomic_dir, cache_format_since, cache_root, clean_orphans,
                            config_key, entry_at_fault, entry_lock, is_main_process, mark_cache, pick_device, quarantine,
                            read_only, verify_entry)


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    #: of `seconds`, those spent by earlier processes this run resumed from (interrupted ones),
    #: so a stage's train_seconds counts them too and agrees with tokens_per_second
    resumed_seconds: float = 0.0
    #: more curves a callback records, by name (e.g. the reward model's held-out accuracy);
    #: they are saved with every resume point, so an interrupted run keeps them too
    metrics: dict[str, list[float]] = field(default_factory=dict)
    #: text the model wrote at each evaluation, by prompt (pretraining's greedy samples), one per val step
    samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------------------------------
# The optimiser, its schedule and one step
# ---------------------------------------------------------------------------------------
#: The devices on which `OptimConfig.bf16` turns bfloat16 autocast on. On a CPU what it gains
#: depends on the processor's bf16 units (with AMX, on one of this project's machines, an 8-layer Llama
#: step of SmolLM2's width took 0.66 s against 0.88 s in float32), so the knob is a GPU's; the
#: tests add "cpu" to run the same code here.
BF16_DEVICES = ("cuda",)


def mixed_precision(optim: OptimConfig, device):
    """The autocast context for `optim.bf16` on `device`: bfloat16 where `BF16_DEVICES` lists the
    device's type, else none. The weights stay float32 (the master weights); only the matmuls
    run in bf16. Passes whose numbers are compared must run under the same one — a PPO
    rollout's log-probs and its update's, DPO's reference and policy — or the ratio of the
    policy to itself is not 1 before the first step."""
    device = torch.device(device)
    if optim.bf16 and device.type in BF16_DEVICES:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW as `optim` describes it (weight_decay = 0 makes it Adam), over the parameters that
    train, which must be float32 (the master weights: `mixed_precision` says where bf16 goes).
    With EMBIGGEN_SHARD=optimizer on several processes, each keeps the state of its part of the
    weights (`distributed.shards_optimizer`)."""
    params = [p for p in params if p.requires_grad]
    low = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
    if low:
        raise ValueError(f"the weights to train are {', '.join(low)}: Embiggen trains float32 master weights, "
                         "since in bf16 most small updates round away (load models with model.load_pretrained, "
                         "which converts them; OptimConfig.bf16 gives bf16 speed)")
    settings = {"lr": optim.lr, "betas": tuple(optim.betas), "eps": optim.eps, "weight_decay": optim.weight_decay}
    if shards_optimizer():
        return sharded_adamw(params, **settings)
    return torch.optim.AdamW(params, **settings)


def lr_at(step: int, steps: int, optim: OptimConfig) -> float:
    """Linear warmup to optim.lr, then cosine decay to optim.lr * optim.min_lr_ratio at `steps`."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, steps - optim.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cosine)


def optimizer_step(model, optimizer, loss: torch.Tensor | None, grad_clip: float) -> None:
    """Gradients (added up over the ranks of a data-parallel run; `loss=None`: this rank's share
    was empty), clipping, update."""
    optimizer.zero_grad(set_to_none=True)
    if loss is not None:
        loss.backward()
    all_reduce_gradients(model)
    clip_gradients(list(model.parameters()), grad_clip)
    optimizer.step()


# ---------------------------------------------------------------------------------------
# Resume points: everything needed to continue an interrupted run, as safetensors plus JSON
# ---------------------------------------------------------------------------------------
def optimizer_state_tensors(optimizer) -> dict:
    """AdamW's per-parameter state as flat tensors ("<param index>.<name>"), for safetensors. A
    state split over the ranks (EMBIGGEN_SHARD) is gathered first, on every rank; rank 0 gets it
    all, the others nothing."""
    if is_sharded(optimizer):
        optimizer.consolidate_state_dict(to=0)
        if not is_main_process():
            return {}
        per_param = optimizer.state_dict()["state"]  # {param index: {name: value}}
    else:
        params = optimizer.param_groups[0]["params"]
        if not is_main_process() and not any(is_slice(p) for p in params):
            return {}
        per_param = {i: optimizer.state[p] for i, p in enumerate(params) if p in optimizer.state}
    out = {f"{i}.{name}": full_tensor(torch.as_tensor(value)).detach().cpu().contiguous()  # slices: gathered
           for i, state in per_param.items() for name, value in state.items()}
    return out if is_main_process() else {}


def restore_optimizer_state(optimizer, tensors: dict) -> None:
    """What `optimizer_state_tensors` wrote, into `optimizer` (a sharded one takes its part)."""
    params = optimizer.param_groups[0]["params"]
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        p = params[int(i)]
        if name != "step":  # the moments, cut as the weight is where it is a slice
            value = like(value.to(p.device), p) if value.shape == p.shape else value.to(p.device)
        per_param.setdefault(int(i), {})[name] = value
    if is_sharded(optimizer):
        group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        optimizer.load_state_dict({"state": per_param, "param_groups": [{**group, "params": list(range(len(params)))}]})
        return
    for i, state in per_param.items():
        optimizer.state[params[i]].update(state)


def _load_weights(model, path: str) -> None:
    """The weights `save_resume_point` wrote into `model`, each weight cut as it is in `model` (a slice of a
    sharded layer, or whole); a tied weight the file holds once is loaded once."""
    device = str(next(model.parameters()).device)
    if not is_split(resharded(model)):
        load_model(model, path, device=device)
        return
    tensors = load_file(path, device=device)
    state = model.state_dict()
    loaded = {t.data_ptr() for name, t in state.items() if name in tensors and not is_slice(t)}
    with torch.no_grad():
        for name, t in state.items():
            if name in tensors:
                t.copy_(like(tensors[name], t))
            elif is_slice(t) or t.data_ptr() not in loaded:  # neither in the file nor tied to a weight that is
                raise KeyError(f"{name} is not in {path}")


def save_resume_point(folder: Path, model, optimizer, generator: torch.Generator, state: dict) -> None:
    """The model (tied weights once), the optimiser's state, the random generator and `state`
    (any JSON: the step, the log, ...), written atomically into `folder`. Called on every rank
    (what is split over the ranks is gathered from all of them); rank 0 writes."""
    optimizer_state = optimizer_state_tensors(optimizer)
    if is_split(resharded(model)):
        whole = {name: full_tensor(t).detach().cpu().contiguous().clone() for name, t in model.state_dict().items()}
    if not is_main_process():
        return
    with atomic_dir(folder) as tmp:
        if is_split(model):
            save_file(whole, str(tmp / "model.safetensors"))
        else:
            save_model(model, str(tmp / "model.safetensors"))
        save_file({**optimizer_state, "generator_state": generator.get_state()}, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state))


def load_resume_point(folder: Path, model, optimizer, generator: torch.Generator) -> dict | None:
    """Restore what `save_resume_point` wrote into the same objects and return its `state`
    (None if there is no resume point)."""
    folder = Path(folder)
    if not folder.exists():
        return None
    root = _cache_of(folder)
    problem = verify_entry(folder, cache_format_since(root) if root is not None else None)
    if problem is None:
        try:
            state = json.loads((folder / "state.json").read_text())
            _load_weights(model, str(folder / "model.safetensors"))
            opt = load_file(str(folder / "optimizer.safetensors"))
            generator.set_state(opt.pop("generator_state"))
            restore_optimizer_state(optimizer, opt)
            return state
        except Exception as exc:  # noqa: BLE001 - a resume point that cannot be read: start again
            if not entry_at_fault(exc):  # out of memory, threads, ...: the resume point is kept for the next run
                raise EntryLoadError(folder, exc) from exc
            problem = f"the resume point could not be loaded ({type(exc).__name__})"
    quarantine(folder, f"{problem}; training starts from the beginning")
    return None


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------
def train_loop(model, next_batch, loss_fn, cfg, val_loss_fn=None, device=None, seed: int = 0, callback=None,
               progress: bool = True, resume_dir: Path | None = None, desc: str = "train",
               units=None) -> TrainLog:
    """Train `model` for cfg.steps steps with cfg.optim and return the loss curves.

    next_batch(generator) -> dict of tensors; loss_fn(model, batch) -> (loss, n_tokens) or
    (loss, n_tokens, {name: value}), whose named parts are logged per step in `log.metrics`;
    val_loss_fn(model) -> float, run every cfg.eval_every steps. `callback(step, log)` runs
    after each evaluation (for live plots, or to record more curves in `log.metrics`). With
    `resume_dir`, a resume point is written at every evaluation and picked up by the next
    call, so an interrupted run continues where it stopped and ends with the same weights
    as an uninterrupted one. On several processes (`lm.distributed`) next_batch gives this
    rank's share of the batch, and each share's loss counts in proportion to the units its
    loss is a mean over: n_tokens, or `units(batch)` (DPO's pairs, the reward model's)."""
    device = torch.device(device or pick_device())
    model.to(device).train()
    if cfg.optim.gradient_checkpointing:
        model.activation_checkpointing_enable()
    shard_weights(model)  # EMBIGGEN_SHARD=weights: each rank keeps a slice of every layer while it trains
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    accumulate = cfg.optim.accumulation_steps
    if accumulate < 1:
        raise ValueError(f"accumulation_steps must be at least 1, got {accumulate}")
    world = world_size()
    generator = torch.Generator().manual_seed(seed)  # the same on every rank: the same global batches
    step, log = 0, TrainLog()
    state = load_resume_point(resume_dir, model, optimizer, generator) if resume_dir is not None else None
    if state is not None:
        step, log = state["step"], TrainLog(**state["log"])
        log.resumed_seconds = log.seconds
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not progress, leave=True)
    start = time.perf_counter() - log.seconds
    while step < cfg.steps:
        lr = lr_at(step, cfg.steps, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        step_loss, n_tokens, parts = 0.0, 0, {}
        for _ in range(accumulate):  # the gradient of the mean loss over `accumulate` batches
            batch = {k: v.to(device) for k, v in next_batch(generator).items()}  # this rank's share
            with mixed_precision(cfg.optim, device):
                loss, n, *extra = loss_fn(model, batch)
            # several ranks: each share's loss weighted by its share of the batch's units (`distributed`)
            if world > 1:
                mine = float(n) if units is None else float(units(batch))
                share = mine / max(1e-12, all_reduce_sum(mine))
            else:
                share = 1.0
            (loss * share / accumulate).backward()
            step_loss += all_reduce_sum(loss.item() * share) / accumulate
            n_tokens += int(all_reduce_sum(int(n)))
            for name, value in (extra[0] if extra else {}).items():
                parts[name] = parts.get(name, 0.0) + all_reduce_sum(value * share) / accumulate
        all_reduce_gradients(model)
        clip_gradients(list(model.parameters()), cfg.optim.grad_clip)
        optimizer.step()
        step += 1
        log.steps.append(step)
        log.train_loss.append(step_loss)
        for name, value in parts.items():  # parts of the loss, one value per step
            log.metrics.setdefault(name, []).append(value)
        log.lr.append(lr)
        log.tokens += n_tokens
        if not math.isfinite(log.train_loss[-1]):
            raise FloatingPointError(f"training loss became {log.train_loss[-1]} at step {step}; "
                                     f"try a lower learning rate than {cfg.optim.lr}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            log.seconds = time.perf_counter() - start
            if val_loss_fn is not None:
                log.val_steps.append(step)
                log.val_loss.append(val_loss_fn(model))
                bar.set_postfix(train=f"{log.train_loss[-1]:.3f}", val=f"{log.val_loss[-1]:.3f}")
            if callback is not None:  # first, so that what it records goes into the resume point
                callback(step, log)
            if resume_dir is not None and step < cfg.steps:  # every rank: a sharded optimiser is gathered
                save_resume_point(Path(resume_dir), model, optimizer, generator, {"step": step, "log": asdict(log)})
        bar.update(1)
    bar.close()
    log.seconds = time.perf_counter() - start
    if cfg.optim.gradient_checkpointing:
        model.activation_checkpointing_disable()
    gather_weights(model)  # whole again: to save, to evaluate, for the next stage
    model.eval()
    return log


# ---------------------------------------------------------------------------------------
# The cache every stage uses
# ---------------------------------------------------------------------------------------
#: Knobs added after caches were written, left out of cache keys while they hold their default
#: (which trains what was trained before), so that a cache stays valid across the addition.
LATE_KNOBS = {"lora": asdict(LoRAConfig())}


def without_late_defaults(value):
    """`value` (JSON-able config) without the `LATE_KNOBS` entries that hold their default."""
    if isinstance(value, dict):
        return {k: without_late_defaults(v) for k, v in value.items()
                if not (k in LATE_KNOBS and without_late_defaults(v) == without_late_defaults(LATE_KNOBS[k]))}
    if isinstance(value, (list, tuple)):
        return [without_late_defaults(v) for v in value]
    return value


def cache_dir(stage: str, preset: Preset, *key_parts, tag: str = "") -> Path:
    """`$EMBIGGEN_CACHE/<stage>/<preset>-seed<seed>[-tag]-<hash of key_parts>`: one folder per
    trained model. `key_parts` are what decides its weights: the training config, the
    folder names of the models it starts from, versions of the data and the code."""
    key = config_key(stage, *without_late_defaults(list(key_parts)))
    return cache_root() / stage / f"{preset.name}-seed{preset.seed}{'-' + tag if tag else ''}-{key}"


class NotCached(UserError):
    """Raised inside `cache_only()` where `train_or_load` would have to train: what is missing."""

    def __init__(self, path: Path):
        super().__init__(f"{path} is not in the cache")
        self.path = path


_CACHE_ONLY = contextvars.ContextVar("cache_only", default=False)


@contextmanager
def cache_only():
    """Within this block `train_or_load` loads what is cached and raises `NotCached` instead of
    training: the command line asks before it starts minutes of training (`--train`)."""
    token = _CACHE_ONLY.set(True)
    try:
        yield
    finally:
        _CACHE_ONLY.reset(token)


def train_or_load(path: Path, load, train, force: bool = False):
    """`load(path)` if a finished model is cached at `path`; otherwise `train(path)`, which
    trains (resuming from `resume_dir(path)` if an interrupted run left a resume point there)
    and saves into `path` atomically.

    The cache heals itself: an entry whose files do not match the sizes and SHA-256 sums
    recorded when it was written (`utils.verify_entry`), or that fails to load because of what
    its files hold (`utils.entry_at_fault`: a format error, a missing file), is moved aside
    with a one-line warning and rebuilt. An entry that fails to load for a reason outside it
    (out of memory or threads) stays, and the error says so (`utils.EntryLoadError`). Several
    processes may share one cache: while one builds an entry the others wait for it
    (`utils.entry_lock`), then load it. Temporary folders that crashed processes left behind
    are removed. A cache that cannot be written (mounted read-only) is read without a lock;
    what would have to be written there is refused in one line naming EMBIGGEN_CACHE."""
    path = Path(path)
    if world_size() > 1:
        return _train_or_load_together(path, load, train, force)
    root = _cache_of(path)
    since = cache_format_since(root) if root is not None else None  # (a cache of a newer format stops here)
    with entry_lock(path) as writable:
        if writable:
            clean_orphans(path.parent)
            if root is not None:
                mark_cache(root)
        if is_cached(path) and not force:
            problem = verify_entry(path, cache_format_since(root) if root is not None else since)
            if problem is None:
                try:
                    return load(path)
                except Exception as exc:  # noqa: BLE001 - sorted below: the entry's fault, or the machine's
                    if not entry_at_fault(exc):
                        raise EntryLoadError(path, exc) from exc
                    problem = f"it could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            if not writable:
                raise CacheReadOnly(f"{path} is damaged ({problem}), and EMBIGGEN_CACHE={cache_root()} cannot be "
                                    "written to rebuild it: point EMBIGGEN_CACHE at a writable copy of the cache")
            quarantine(path, problem)
        if _CACHE_ONLY.get():
            raise NotCached(path)
        if not writable:
            raise CacheReadOnly(f"EMBIGGEN_CACHE={cache_root()} cannot be written (read-only), and {path.parent.name}/"
                                f"{path.name} is not in it yet: point EMBIGGEN_CACHE at a writable folder to build it")
        try:
            return train(path)
        except OSError as exc:
            if read_only(exc):
                raise CacheReadOnly(f"EMBIGGEN_CACHE={cache_root()}: cannot write {path.parent.name}/{path.name} there "
                                    f"({exc.strerror}): point EMBIGGEN_CACHE at a writable folder") from exc
            raise


def _train_or_load_together(path: Path, load, train, force: bool):
    """`train_or_load` on every rank of a data-parallel run: rank 0 looks in the cache (the
    entry's checks as in one process) and tells the others; if the entry is there, every rank
    loads it; if not, every rank trains — together, each on its share — while rank 0 holds the
    entry's lock and alone writes it, and the others wait for it at the end."""
    cached = False
    if is_main_process():
        root = _cache_of(path)
        cached = is_cached(path) and not force and verify_entry(
            path, cache_format_since(root) if root is not None else None) is None
    if broadcast_flag(cached):
        barrier()
        return load(path)
    if _CACHE_ONLY.get():
        raise NotCached(path)
    with (entry_lock(path) if is_main_process() else nullcontext(True)) as writable:
        if writable and is_main_process():
            clean_orphans(path.parent)
            if _cache_of(path) is not None:
                mark_cache(_cache_of(path))
        result = train(path)
    barrier()  # rank 0 has written the entry
    return result


def _cache_of(path: Path) -> Path | None:
    """The cache root `path` lies in (`cache_root()`), or None if it lies outside it."""
    root = cache_root()
    try:
        Path(path).resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return root


def resume_dir(path: Path) -> Path:
    """Where an interrupted training run for `path` keeps its resume point."""
    return path.parent / f".{path.name}.resume"


def is_cached(path: Path) -> bool:
    """Is there a finished entry at `path`? (`utils.atomic_dir` renames a folder there only
    once everything in it is written.)"""
    path = Path(path)
    return path.is_dir() and any(path.iterdir())


def save_checkpoint(path: Path, model, tokenizer, info: dict, log, extra_files: dict | None = None) -> None:
    """Save weights (safetensors), tokenizer and `train_log.json` (plus `extra_files`, name ->
    text) into `path`, atomically: an interrupted save leaves no half-written folder. Also
    removes the run's resume point. A model with LoRA adapters has them saved in `adapter/`
    and then merged into its weights, in place: what is saved and returned is an ordinary model."""
    with atomic_dir(path) as tmp:
        if has_adapters(model):
            save_adapters(tmp / "adapter", model)
            merge_adapters(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        (tmp / "train_log.json").write_text(json.dumps({**info, "log": asdict(log)}))
    if is_main_process():
        shutil.rmtree(resume_dir(path), ignore_errors=True)


def read_checkpoint_info(path: Path) -> tuple[dict, TrainLog]:
    """The `train_log.json` of a checkpoint: its info and its training log."""
    info = json.loads((Path(path) / "train_log.json").read_text())
    return info, TrainLog(**info.pop("log"))


def load_checkpoint(path: Path, device="cpu", model_class=AutoModelForCausalLM):
    """(model, tokenizer, info, log) from a folder written by `save_checkpoint`; the weights in
    float32, as every stage trains them (`model.load_pretrained`)."""
    info, log = read_checkpoint_info(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = model_class.from_pretrained(path, use_safetensors=True, dtype=torch.float32).to(device).eval()
    return model, tokenizer, info, log
