"""GRPO throughput: answers per second on a fixed configuration, ours and (if installed) TRL's.

    python benchmarks/grpo_throughput.py [--threads 2] [--steps 6] [--no-trl] [--model random|sft]

The configuration is fixed so the figure means the same thing everywhere: the laptop preset's
model shape (about 0.9M parameters, freshly initialised), 16 prompts of GRPO's training set per
step with G = 8 answers each (128 answers), answers of up to 24 tokens sampled at temperature 1,
one on-policy gradient step per batch (TRL: num_iterations = 1, one generation batch per
optimiser step), no KL term and so no reference model on either side, gradient checkpointing
off on both, the same learning rate, constant. The first step of each trainer is a warm-up and
is not timed. An *answer* is one sampled completion, scored and trained on.

The reward is the same function on both sides. With `--model random` (the default): a
pseudo-random 0 or 1 from the answer's text (a hash), so that nearly every group carries a
signal and both trainers update on every answer — the raw cost of sampling and updating. With
`--model sft`: the laptop preset's SFT model (trained, or loaded from the cache) and the
verifier GRPO trains with (exact match against the reference), as in notebook 5 — where groups
whose answers all agree carry no signal, and ours skips their answers' passes (the share it
updated is printed). Where `trl==1.12.0` is installed (`pip install -e ".[bench]"`; never a
runtime dependency), TRL's GRPOTrainer runs on the identical model, prompts and settings in the
same process, and the ratio is printed.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import tempfile
import time

import torch

from embiggen.chain import train_or_load_sft
from embiggen.data.splits import data_splits
from embiggen.judging.verifiers import exact_reward
from embiggen.lm.model import build_model
from embiggen.lm.tokenizer import chat_prompt
from embiggen.methods.grpo import GRPOTrainer
from embiggen.presets import GRPOConfig, OptimConfig, get_preset
from embiggen.utils import set_seed, set_threads

from common import import_trl, laptop_tokenizer

PROMPTS, G, ANSWER_LENGTH, LR = 16, 8, 24, 1e-4


def coin(text: str) -> float:
    """A reward both trainers compute alike: 0 or 1, fixed by the text."""
    return float(hashlib.sha256(text.encode()).digest()[0] % 2)


def build_policy(preset, tokenizer):
    set_seed(0)
    return build_model(preset.model, tokenizer, seed=0)


def bench_embiggen(preset, tokenizer, prompts, steps: int, policy, reward) -> tuple[float, float]:
    cfg = GRPOConfig(steps=steps + 1, prompts_per_step=PROMPTS, group_size=G, minibatch_size=PROMPTS * G,
                     max_new_tokens=ANSWER_LENGTH, kl_coef=0.0, optim=OptimConfig(lr=LR, min_lr_ratio=1.0, warmup_steps=0,
                                                                     weight_decay=0.0, betas=(0.9, 0.999)))
    trainer = GRPOTrainer(policy, tokenizer, reward, cfg, device="cpu", seed=0)
    trainer.step(prompts[:PROMPTS])  # warm-up
    t, updated = time.perf_counter(), 0
    for i in range(steps):
        updated += trainer.step(prompts[PROMPTS * (i + 1): PROMPTS * (i + 2)])["updated_answers"]
    return steps * PROMPTS * G / (time.perf_counter() - t), updated / (steps * PROMPTS * G)


def bench_trl(preset, tokenizer, prompts, steps: int, policy, reward_of) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer as TRLTrainer

    dataset = Dataset.from_dict({"prompt": [chat_prompt(tokenizer, e.instruction) for e in prompts],
                                 "index": list(range(len(prompts)))})
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    examples = prompts

    def reward(prompts, completions, index, **kwargs):  # TRL hands the dataset's other columns as keywords
        return [reward_of(examples[i], c) for i, c in zip(index, completions)]

    with tempfile.TemporaryDirectory() as out:
        args = TRLConfig(output_dir=out, per_device_train_batch_size=PROMPTS * G, gradient_accumulation_steps=1,
                         num_generations=G, num_iterations=1, max_completion_length=ANSWER_LENGTH, temperature=1.0,
                         top_k=0, top_p=1.0, beta=0.0, loss_type="grpo", learning_rate=LR,
                         lr_scheduler_type="constant", max_steps=steps + 1, gradient_checkpointing=False,
                         disable_dropout=True, report_to="none", save_strategy="no", logging_steps=10_000,
                         use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0, shuffle_dataset=False)
        trainer = TRLTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[Clock()])
        trainer.train()
    if len(stamps) < 2:
        raise RuntimeError(f"TRL ran {len(stamps)} steps; cannot time it")
    return (len(stamps) - 1) * PROMPTS * G / (stamps[-1] - stamps[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed GRPO steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $EMBIGGEN_THREADS or all)")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL even if it is installed")
    parser.add_argument("--model", choices=("random", "sft"), default="random",
                        help="a fresh model and a coin-flip reward, or the laptop SFT model and GRPO's verifier")
    args = parser.parse_args()

    threads = set_threads(args.threads)
    if args.model == "sft":
        preset = get_preset("laptop")
        sft = train_or_load_sft(preset, device="cpu")
        tokenizer, make_policy, reward = sft.tokenizer, lambda: copy.deepcopy(sft.model), exact_reward
    else:
        preset, tokenizer = laptop_tokenizer()
        make_policy, reward = lambda: build_policy(preset, tokenizer), lambda example, text: coin(text)
    prompts = data_splits(preset).grpo_train()[: PROMPTS * (args.steps + 2)]
    print(f"model={args.model} threads={threads} policy_params={make_policy().num_parameters():,} prompts_per_step="
          f"{PROMPTS} G={G} answer_length<={ANSWER_LENGTH} updates_per_batch=1 timed_steps={args.steps}")
    ours, updated = bench_embiggen(preset, tokenizer, prompts, args.steps, make_policy(), reward)
    print(f"embiggen_answers_per_second={ours:.1f} share_of_answers_updated={updated:.3f}")
    if args.no_trl:
        return
    trl = import_trl("GRPOTrainer")
    if trl is None:
        return
    try:
        theirs = bench_trl(preset, tokenizer, prompts, args.steps, make_policy(), reward)
    except Exception as exc:  # noqa: BLE001 - say what fails on this machine, as the issue asks
        print(f"trl_version={trl.__version__} TRL's GRPOTrainer failed here: {type(exc).__name__}: {exc}")
        raise
    print(f"trl_version={trl.__version__} trl_answers_per_second={theirs:.1f}")
    print(f"speedup={ours / theirs:.2f}x")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
