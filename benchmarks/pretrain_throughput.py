"""Pretraining throughput: tokens per second and model FLOPs utilisation (MFU).

    python benchmarks/pretrain_throughput.py [--preset laptop] [--steps 30] [--threads 2]

MFU = 6 * params * tokens_per_second / peak, where 6 * params is the usual estimate of
training FLOPs per token (2 forward + 4 backward, Kaplan et al. 2020) and `peak` is a
float32 matmul's FLOP/s measured in this same run on this same machine — so the figure
says how much of what the hardware can do the training loop actually uses.
"""

from __future__ import annotations

import argparse
import time

import torch

from embiggen.data.splits import build_corpus, build_world
from embiggen.lm.model import build_model
from embiggen.lm.tokenizer import train_tokenizer
from embiggen.lm.training import make_optimizer, optimizer_step
from embiggen.methods.pretrain import get_batch, next_token_loss, tokenize_corpus
from embiggen.presets import get_preset
from embiggen.utils import pick_device, set_threads


def matmul_peak(n: int = 1024, repeats: int = 20, device="cpu") -> float:
    """FLOP/s of a square float32 matmul (2 n^3 FLOPs each), best of `repeats`."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $EMBIGGEN_THREADS or all cores)")
    args = parser.parse_args()

    threads = set_threads(args.threads)
    preset = get_preset(args.preset)
    device = pick_device()
    cfg = preset.pretrain
    world = build_world(preset)
    train_docs, _ = build_corpus(preset, world)
    tokenizer = train_tokenizer(train_docs[:5000], preset.vocab_size)
    data = tokenize_corpus(tokenizer, train_docs[:5000])
    model = build_model(preset.model, tokenizer).to(device).train()
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    generator = torch.Generator().manual_seed(0)

    def step():
        x, y = get_batch(data, cfg.batch_size, cfg.seq_len, generator)
        optimizer_step(model, optimizer, next_token_loss(model, x.to(device), y.to(device)), cfg.optim.grad_clip)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    tokens_per_second = args.steps * cfg.batch_size * cfg.seq_len / seconds
    params = model.num_parameters()
    peak = matmul_peak(device=device)
    mfu = 6 * params * tokens_per_second / peak
    print(f"preset={preset.name} device={device} threads={threads} params={params:,} "
          f"batch={cfg.batch_size}x{cfg.seq_len} steps={args.steps}")
    print(f"tokens_per_second={tokens_per_second:,.0f}")
    print(f"model_flops_per_second={6 * params * tokens_per_second / 1e9:.2f} GFLOP/s")
    print(f"matmul_peak={peak / 1e9:.1f} GFLOP/s")
    print(f"mfu={mfu:.1%}")


if __name__ == "__main__":
    main()
