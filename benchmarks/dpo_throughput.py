"""DPO throughput: optimiser steps per second on a fixed configuration, ours and (if installed) TRL's.

    python benchmarks/dpo_throughput.py [--threads 2] [--steps 20] [--no-trl]

The configuration is fixed so the figure means the same thing everywhere: a Llama-style
policy of about 1.4M parameters and a frozen copy as the reference, 16 preference pairs per
step (32 sequences), prompt + answer at most 160 tokens, beta 0.5, AdamW at 2e-5, float32,
gradient checkpointing off on both sides. Ours packs a batch's 32 sequences into rows of 160
tokens and writes each pair's prompt once, both answers after it (its defaults,
`DPOConfig.packing` and `DPOConfig.share_prompt`); it is also timed packed without sharing,
and padded, one sequence per row, as TRL's DPOTrainer pads by default. The pairs are the laptop preset's preference
prompts, the gold answer chosen and another prompt's answer rejected: the *content* does not
matter for speed, only that both trainers see the same tokens.

Both sides compute the reference log-probabilities once before training (ours always does;
TRL's `precompute_ref_log_probs=True`), so a step is the same work: one forward and backward
pass of the policy over 32 sequences. Ours is timed over its whole training loop (its first
step included); TRL's from the end of its first step to the end of its last (warm-up
excluded), which can only flatter TRL. Where `trl==1.12.0` is installed (`pip install -e
".[bench]"`; never a runtime dependency), both run in the same process and the ratio is printed.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

from embiggen.data.splits import data_splits
from embiggen.judging.preferences import Comparison
from embiggen.lm.model import build_model
from embiggen.lm.tokenizer import chat_prompt
from embiggen.methods.dpo import train_dpo
from embiggen.presets import DPOConfig, ModelConfig, OptimConfig
from embiggen.utils import set_seed, set_threads

from common import import_trl, laptop_tokenizer

POLICY = ModelConfig(hidden_size=160, num_hidden_layers=4, num_attention_heads=4, intermediate_size=432,
                     max_position_embeddings=256)
PAIRS_PER_STEP, MAX_LENGTH, BETA, LR = 16, 160, 0.5, 2e-5


def build_models(tokenizer):
    set_seed(0)
    policy = build_model(POLICY, tokenizer, seed=0)
    return policy, copy.deepcopy(policy).eval()


def make_pairs(preset, n: int) -> list[Comparison]:
    prompts = [e for e in data_splits(preset).preferences if e.cluster not in ("unknown_person", "medical", "harmful")]
    prompts = prompts[: n + 1]
    return [Comparison(e.instruction, e.answer, prompts[i + 1].answer, e.cluster, "correct vs wrong", 1.0)
            for i, e in enumerate(prompts[:n])]


def bench_embiggen(tokenizer, pairs, steps: int, packing: bool = True, share_prompt: bool = True) -> float:
    policy, ref = build_models(tokenizer)
    cfg = DPOConfig(beta=BETA, steps=steps, batch_size=PAIRS_PER_STEP, max_length=MAX_LENGTH, eval_every=10 ** 9,
                    optim=OptimConfig(lr=LR, warmup_steps=0, weight_decay=0.0), packing=packing,
                    share_prompt=share_prompt)
    log = train_dpo(policy, ref, tokenizer, pairs, [], cfg, device="cpu", seed=0, progress=False)
    return steps / log.seconds


def bench_trl(tokenizer, pairs, steps: int) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer as TRLTrainer

    policy, ref = build_models(tokenizer)
    dataset = Dataset.from_dict({"prompt": [chat_prompt(tokenizer, p.prompt) for p in pairs],
                                 "chosen": [p.chosen for p in pairs], "rejected": [p.rejected for p in pairs]})
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = TRLConfig(output_dir=out, per_device_train_batch_size=PAIRS_PER_STEP, gradient_accumulation_steps=1,
                         max_steps=steps, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
                         weight_decay=0.0, beta=BETA, loss_type=["sigmoid"], max_length=MAX_LENGTH,
                         precompute_ref_log_probs=True, gradient_checkpointing=False, bf16=False, fp16=False,
                         use_cpu=True, report_to=[], save_strategy="no", logging_steps=10 ** 6, seed=0,
                         dataloader_num_workers=0)
        trainer = TRLTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[Clock()])
        trainer.train()
    if len(stamps) < 2:
        raise RuntimeError(f"TRL ran {len(stamps)} steps; cannot time it")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed DPO steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $EMBIGGEN_THREADS or all)")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL even if it is installed")
    args = parser.parse_args()

    threads = set_threads(args.threads)
    preset, tokenizer = laptop_tokenizer()
    pairs = make_pairs(preset, PAIRS_PER_STEP * (args.steps + 1))
    policy, _ = build_models(tokenizer)
    print(f"threads={threads} policy_params={policy.num_parameters():,} pairs_per_step={PAIRS_PER_STEP} "
          f"max_length={MAX_LENGTH} timed_steps={args.steps}")
    padded = bench_embiggen(tokenizer, pairs, args.steps, packing=False)
    print(f"embiggen_padded_steps_per_second={padded:.2f}")
    packed = bench_embiggen(tokenizer, pairs, args.steps, share_prompt=False)
    print(f"embiggen_packed_steps_per_second={packed:.2f}")
    ours = bench_embiggen(tokenizer, pairs, args.steps)
    print(f"embiggen_steps_per_second={ours:.2f} (the default: packed, each pair's prompt written once)")
    if args.no_trl:
        return
    trl = import_trl("DPOTrainer")
    if trl is None:
        return
    theirs = bench_trl(tokenizer, pairs, args.steps)
    print(f"trl_version={trl.__version__} trl_steps_per_second={theirs:.2f}")
    print(f"speedup={ours / theirs:.2f}x (packed, prompts not shared: {packed / theirs:.2f}x; "
          f"padded like TRL's default: {padded / theirs:.2f}x)")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
