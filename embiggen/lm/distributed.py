"""Data parallelism: the same run on several processes, each with its share of every batch.

    torchrun --nproc_per_node N -m embiggen run --preset gpu

Each of the N processes (ranks) holds the whole model. At every step all of them draw the same
global batch, from the same seeded generator, and each keeps its share (`shard`). Each takes the
gradient of its share's loss weighted by its share of the batch's units — labelled tokens for a
loss averaged over tokens (SFT), examples for one averaged over examples (DPO's pairs) — and an
all-reduce adds the N gradients up (`all_reduce_gradients`): the gradient of the whole batch's
mean loss, as one process computes it, up to float rounding. The optimiser then takes the same
step everywhere, so the weights stay equal without ever being sent, and the result does not depend
on N. This is what PyTorch's `DistributedDataParallel` does, written out (it also overlaps the
all-reduce with the backward pass, which matters for speed on GPUs, not for the numbers).

Only rank 0 writes: the cache, resume points, the report (`utils.is_main_process`); the others
wait at a barrier and then load what it wrote. Pretraining, SFT, the reward model and DPO split
their batches. PPO and GRPO split their rollouts and their updates: each rank samples and scores
its share of the prompts, every token drawn with its own uniform from one generator seeded by the
step (`generate.draw_tokens`: the same episodes whichever rank samples them, and however many
there are); the shares are gathered (`gather_shares`) so that every rank holds the whole rollout,
and each takes its share of every minibatch of the update. The processes find each other through
torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); the backend is NCCL on GPUs
and gloo on CPUs.

A model whose training does not fit one device can be split over the ranks (EMBIGGEN_SHARD; the
numbers stay those of one process up to float rounding):

* `optimizer` — ZeRO stage 1 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward
  Training Trillion Parameter Models", through torch's `ZeroRedundancyOptimizer`). AdamW keeps
  two float32 moments per weight, twice the weights themselves; each rank keeps the moments of its
  part of the weights only, updates that part and sends the new values to the others. Weights
  and gradients stay whole on every rank.
* `weights` — FSDP (Zhao et al. 2023, "PyTorch FSDP", torch's `fully_shard`): every decoder
  layer's weights, gradients and moments are split, each rank keeping 1/N of them; a layer is
  gathered whole just for its forward and backward pass, and its gradient is reduce-scattered
  (each rank receives the sum of its own slice). The embeddings, the final norm and the heads stay
  whole on every rank, their gradients added up as above. After training the layers are gathered
  back into ordinary modules (`gather_weights`), so saving, evaluation and the next stage see a
  plain model. Not with LoRA (whose frozen weights need no optimiser state anyway).
"""

from __future__ import annotations

import json
import math
import os
import weakref

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor, distribute_tensor


def init() -> None:
    """Join the process group torchrun set up (nothing to do in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() and os.environ.get("EMBIGGEN_DEVICE", "cuda").startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


#: What EMBIGGEN_SHARD can split over the ranks: nothing, AdamW's state (ZeRO-1), or the layers' weights (FSDP).
SHARDING = ("none", "optimizer", "weights")


def sharding() -> str:
    """EMBIGGEN_SHARD on several processes ('none' in one)."""
    mode = os.environ.get("EMBIGGEN_SHARD", "none")
    if mode not in SHARDING:
        raise ValueError(f"EMBIGGEN_SHARD must be one of {', '.join(SHARDING)}; got {mode!r}")
    return mode if world_size() > 1 else "none"


def shards_optimizer() -> bool:
    """Whether each rank keeps only its part of AdamW's state (EMBIGGEN_SHARD=optimizer)."""
    return sharding() == "optimizer"


def sharded_adamw(params, **settings):
    """AdamW whose state is split over the ranks (torch's ZeroRedundancyOptimizer): each rank
    updates its part of the weights and broadcasts the new values."""
    return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, **settings)


def is_sharded(optimizer) -> bool:
    """Whether `optimizer` keeps only this rank's part of the state (`sharded_adamw`)."""
    return isinstance(optimizer, ZeroRedundancyOptimizer)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def shard(items, may_be_empty: bool = False):
    """This rank's share of `items` (every N-th one, starting at its rank): rows of a batch, or
    the indices of the examples a batch is built from. A share may be empty only where the caller
    says so (GRPO's minibatches of answers that carry a signal)."""
    if world_size() > 1 and len(items) < world_size() and not may_be_empty:
        raise ValueError(f"a batch of {len(items)} cannot be split over {world_size()} processes: raise batch_size")
    return items[rank()::world_size()]


def shard_rows(batch: dict) -> dict:
    """This rank's rows of a batch of independent rows (every tensor's first dimension)."""
    if world_size() == 1:
        return batch
    n = len(next(iter(batch.values())))
    if n < world_size():
        raise ValueError(f"a batch of {n} rows cannot be split over {world_size()} processes: raise batch_size")
    return {k: (shard(v) if torch.is_tensor(v) and v.dim() > 0 and len(v) == n else v) for k, v in batch.items()}


def _device() -> torch.device:
    """Where collectives' tensors live: NCCL reduces on the GPU, gloo on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(value: float) -> float:
    """The sum of `value` over the ranks."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.item()


def all_reduce_max(value: float) -> float:
    """The largest `value` over the ranks."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def all_finished(done: bool) -> bool:
    """Whether every rank is done (each rank says for itself): a loop that must run as many times
    on every rank — each forward pass of a sharded model needs all of them — stops together."""
    return all_reduce_sum(0.0 if done else 1.0) == 0 if world_size() > 1 else done


def gather_shares(share: torch.Tensor, block: int = 1) -> torch.Tensor:
    """The whole batch, on every rank, from the shares `shard` handed out: rank r holds units r,
    r + N, r + 2N, ... of it, a unit being `block` consecutive rows (GRPO's G answers to one prompt).
    The shares' rows must have the same shape on every rank (`generate.widen_responses`)."""
    if world_size() == 1:
        return share
    n, units = world_size(), len(share) // block
    total = int(all_reduce_sum(units))
    per_rank = -(-total // n)
    dtype = share.dtype
    rows = share.reshape(units, block, *share.shape[1:]).to(torch.uint8 if dtype == torch.bool else dtype)
    padded = torch.zeros((per_rank, *rows.shape[1:]), dtype=rows.dtype, device=_device())
    padded[:units] = rows.to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    whole = torch.empty((total, *rows.shape[1:]), dtype=rows.dtype, device=padded.device)
    for r, part in enumerate(parts):
        whole[r::n] = part[: len(range(r, total, n))]
    return whole.reshape(total * block, *share.shape[1:]).to(device=share.device, dtype=dtype)


def gather_texts(share: list, block: int = 1) -> list:
    """`gather_shares` for a list of strings (or anything JSON can carry), sent as UTF-8 bytes."""
    if world_size() == 1:
        return list(share)
    blocks = [share[i: i + block] for i in range(0, len(share), block)]
    data = torch.tensor(list(json.dumps(blocks).encode()), dtype=torch.uint8)
    sizes = torch.zeros(world_size(), dtype=torch.int64, device=_device())
    sizes[rank()] = len(data)
    dist.all_reduce(sizes)  # every rank's length: the longest sets the padding
    padded = torch.zeros(int(sizes.max()), dtype=torch.uint8, device=_device())
    padded[: len(data)] = data.to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    shares = [json.loads(bytes(part[: int(size)].tolist()).decode()) for part, size in zip(parts, sizes.tolist())]
    total, n = sum(len(s) for s in shares), world_size()
    whole = [shares[i % n][i // n] for i in range(total)]
    return [item for unit in whole for item in unit]


def all_reduce_gradients(model) -> None:
    """Add every trained parameter's gradient up over the ranks (each rank weighted its loss
    already); a rank with nothing to add (an empty share) adds zeros. The sharded layers' slices
    were added up already, in the backward pass (`shard_weights`)."""
    if world_size() == 1:
        return
    for p in model.parameters():
        if p.requires_grad and not is_slice(p):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


# ---------------------------------------------------------------------------------------
# FSDP: each rank keeps a slice of every decoder layer (EMBIGGEN_SHARD=weights)
# ---------------------------------------------------------------------------------------
def is_slice(t) -> bool:
    """Whether `t` is this rank's slice of a sharded weight (a DTensor)."""
    return isinstance(t, DTensor)


def _fsdp_modules(model) -> list:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_split(model) -> bool:
    """Whether some of `model`'s layers are split over the ranks (`shard_weights`)."""
    return bool(_fsdp_modules(model))


def resharded(model):
    """`model` with every split layer back in its slices (a layer that ran forward last may hold
    its whole weights until its backward pass): its parameters are then the slices."""
    for layer in _fsdp_modules(model):
        layer.reshard()
    return model


def decoder_layers(model) -> list:
    """The repeated blocks of the Hugging Face models inside `model`: the modules their classes
    name as never to be split between devices (`_no_split_modules`)."""
    names = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_weights(model) -> None:
    """With EMBIGGEN_SHARD=weights, split every decoder layer of `model` over the ranks, in place
    (before its optimiser is made: AdamW's moments then have the slices' shapes)."""
    if sharding() != "weights":
        return
    if any(type(m).__name__ == "LoraLayer" or hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError("EMBIGGEN_SHARD=weights does not shard LoRA adapters: set EMBIGGEN_SHARD=none or optimizer")
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layers (_no_split_modules) for "
                         "EMBIGGEN_SHARD=weights to split")
    mesh = init_device_mesh(_device().type, (world_size(),))
    for layer in layers:
        _BEFORE[layer] = {m: (set(m.__dict__), {h: set(getattr(m, h)) for h in _HOOKS}) for m in layer.modules()}
        fully_shard(layer, mesh=mesh)
        # each rank's loss is already weighted by its share: the slices' gradients are summed, not averaged
        layer.set_gradient_divide_factor(1.0)
        layer.set_force_sum_reduction_for_comms(True)


def gather_weights(model) -> None:
    """Undo `shard_weights`: every sharded layer gathered whole on every rank and made an
    ordinary module again (its class, no FSDP hooks), for saving, evaluating and sampling."""
    if not is_split(model):
        return
    for layer in _fsdp_modules(model):
        layer.reshard()
        state = fully_shard.state(layer)
        state._pre_forward_hook_handle.remove()
        state._post_forward_hook_handle.remove()
        for module in layer.modules():
            for name, p in list(module._parameters.items()):
                if is_slice(p):
                    module._parameters[name] = torch.nn.Parameter(p.full_tensor().detach().clone(),
                                                                  requires_grad=p.requires_grad)
        layer.__class__ = next(c for c in type(layer).__mro__[1:] if not issubclass(c, FSDPModule))
        for module, (attributes, hooks) in _BEFORE.pop(layer, {}).items():  # what fully_shard added: its state,
            for name in set(module.__dict__) - attributes:                  # which holds the process group
                del module.__dict__[name]
            for name, keys in hooks.items():
                for key in set(getattr(module, name)) - keys:
                    del getattr(module, name)[key]


#: The module hooks `gather_weights` takes off again when they were not there before `shard_weights`.
_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
          "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
#: Each sharded layer's modules' attributes and hooks before `fully_shard` (weakly held).
_BEFORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """`t` whole: a slice gathered from every rank (every rank must ask), a whole tensor as it is."""
    return t.full_tensor() if is_slice(t) else t


def like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`full` cut as `param` is: this rank's slice where `param` is one, `full` itself otherwise."""
    if not is_slice(param):
        return full
    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements)


def clip_gradients(params, max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_`, also over sharded gradients: the norm of the whole
    gradient, its sliced part's squares added up over the ranks; every gradient scaled by
    min(1, max_norm / (norm + 1e-6)) as torch does."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(is_slice(g) for g in grads):
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
        return
    sliced = sum(g.to_local().double().pow(2).sum().item() for g in grads if is_slice(g))
    total = all_reduce_sum(sliced) + sum(g.double().pow(2).sum().item() for g in grads if not is_slice(g))
    scale = min(1.0, max_norm / (math.sqrt(total) + 1e-6))
    for g in grads:
        g.mul_(scale)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's `flag`, on every rank."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=_device())
    dist.broadcast(t, 0)
    return bool(t.item())
