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
their batches. PPO and GRPO split their updates: every rank samples the whole rollout (the same
seed, the same weights: the same episodes, so that nothing depends on N), and each takes its share
of every minibatch; generating is not sped up. The processes find each other through torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT); the backend is NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> None:
    """Join the process group torchrun set up (nothing to do in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() and os.environ.get("EMBIGGEN_DEVICE", "cuda").startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


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
