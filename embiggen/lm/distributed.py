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

A model whose training does not fit one device is mostly the optimiser's fault: AdamW keeps two
float32 moments per weight, twice the float32 weights themselves. With EMBIGGEN_ZERO=1 each rank
keeps the moments of only its part of the weights (ZeRO stage 1, Rajbhandari et al. 2020,
"ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", through torch's
`ZeroRedundancyOptimizer`): it updates that part and sends the new values to the others. The
weights and the gradients stay whole on every rank, so every forward pass, every saved file and
every number is as without it; what is saved to resume is gathered on rank 0 first. Sharding the
weights themselves too (FSDP, ZeRO stage 3) is not built: the model's weights and gradients must
fit one device.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist


def init() -> None:
    """Join the process group torchrun set up (nothing to do in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() and os.environ.get("EMBIGGEN_DEVICE", "cuda").startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def shards_optimizer() -> bool:
    """Whether each rank keeps only its part of the optimiser's state (ZeRO stage 1, Rajbhandari et
    al. 2020): EMBIGGEN_ZERO=1 on several processes."""
    flag = os.environ.get("EMBIGGEN_ZERO", "0")
    if flag not in ("0", "1"):
        raise ValueError(f"EMBIGGEN_ZERO must be 0 or 1, got {flag!r}")
    return flag == "1" and world_size() > 1


def sharded_adamw(params, **settings):
    """AdamW whose state is split over the ranks (torch's ZeroRedundancyOptimizer): each rank
    updates its part of the weights and broadcasts the new values."""
    from torch.distributed.optim import ZeroRedundancyOptimizer  # imported only where it is used

    return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, **settings)


def is_sharded(optimizer) -> bool:
    """Whether `optimizer` keeps only this rank's part of the state (`sharded_adamw`)."""
    optim = sys.modules.get("torch.distributed.optim")
    return optim is not None and isinstance(optimizer, optim.ZeroRedundancyOptimizer)


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
    longest = int(all_reduce_max(len(data)))
    sizes = torch.zeros(world_size(), dtype=torch.int64, device=_device())
    sizes[rank()] = len(data)
    dist.all_reduce(sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=_device())
    padded[: len(data)] = data.to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    shares = [json.loads(bytes(part[: int(size)].tolist()).decode()) for part, size in zip(parts, sizes.tolist())]
    total, n = sum(len(s) for s in shares), world_size()
    whole = [shares[i % n][i // n] for i in range(total)]
    return [item for unit in whole for item in unit]


def all_reduce_gradients(model) -> None:
    """Add every trained parameter's gradient up over the ranks (each rank weighted its loss
    already); a rank with nothing to add (an empty share) adds zeros."""
    if world_size() == 1:
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


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
