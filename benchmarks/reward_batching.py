"""The reward model's batches: whole rankings (InstructGPT) against independent pairs.

    EMBIGGEN_CACHE=... python benchmarks/reward_batching.py [--preset laptop] [--seeds 3] [--threads 2]

InstructGPT (Ouyang et al. 2022, section 3.5) put all C(K, 2) comparisons of a prompt in one
batch element: drawn independently, each answer's pairs land in different steps, which, they
report, made the reward model overfit. Both set-ups train here from the same SFT weights on the
same pairs (the preset's preference collection, from the cache or collected now), the same
number of steps, about the same number of pairs a step, at each seed; each prints its held-out
pairwise accuracy and loss (the preset's held-out pairs), its accuracy on the training pairs,
and its seconds. A figure, not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from embiggen.chain import preference_data, train_or_load_sft
from embiggen.methods.reward import fit_reward_model, pairwise_accuracy
from embiggen.presets import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="laptop")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    sft = train_or_load_sft(preset, progress=False, device="cpu")
    data = preference_data(preset, sft, progress=True)
    train, held = data["train_pairs"], data["eval_pairs"]
    print(f"{len(train):,} training pairs from {len({p.prompt for p in train}):,} prompts; {len(held):,} held-out pairs; "
          f"{preset.reward.steps} steps of about {preset.reward.batch_size} pairs")
    print(f"{'batching':>8} {'seed':>4} {'held-out acc':>12} {'held-out loss':>13} {'train acc':>9} {'seconds':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for batching in ("prompt", "pair"):
                cfg = replace(preset.reward, batching=batching)
                started = time.perf_counter()
                rm = fit_reward_model(sft.path, sft.tokenizer, train, held, data["norm_samples"], cfg,
                                      Path(tmp) / f"{batching}-{seed}", seed=preset.seed + seed, progress=False,
                                      device="cpu")
                seconds = time.perf_counter() - started
                on_train = pairwise_accuracy(rm.model, rm.tokenizer, train[:1000])["accuracy"]
                held_out = pairwise_accuracy(rm.model, rm.tokenizer, held)
                print(f"{batching:>8} {seed:>4} {held_out['accuracy']:>12.1%} {held_out['loss']:>13.3f} "
                      f"{on_train:>9.1%} {seconds:>7.0f}")


if __name__ == "__main__":
    main()
