"""PPO throughput: episodes per second on a fixed configuration, ours and (if installed) TRL's.

    python benchmarks/ppo_throughput.py [--threads 2] [--steps 8] [--no-trl]

The configuration is fixed so the figure means the same thing everywhere: a Llama-style
policy of about 1.4M parameters, a reward model and (for TRL) a value model of the same
shape, batch 64, responses of 24 tokens, 4 PPO epochs over one minibatch of 64, sampling at
temperature 1. An *episode* is one prompt with its sampled response, scored and trained on.
The first step of each trainer is a warm-up and is not timed.

Where `trl==1.12.0` is installed (`pip install -e ".[bench]"`; never a runtime dependency),
TRL's PPOTrainer runs on the identical models, prompts and settings in the same process,
and the ratio is printed. TRL keeps a separate value model (two transformer passes per
step where ours shares the policy's trunk), which is most of the difference.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import replace

import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from embiggen.data.splits import data_splits
from embiggen.judging.labeler import Labeler
from embiggen.lm.model import build_model
from embiggen.lm.tokenizer import chat_prompt
from embiggen.methods.ppo import PPOTrainer
from embiggen.methods.reward import RewardModel
from embiggen.presets import ModelConfig, PPOConfig
from embiggen.utils import set_seed, set_threads

from common import import_trl, laptop_tokenizer

POLICY = ModelConfig(hidden_size=160, num_hidden_layers=4, num_attention_heads=4, intermediate_size=432,
                     max_position_embeddings=256)
BATCH, RESPONSE_LENGTH, EPOCHS = 64, 24, 4


def build_models(tokenizer):
    set_seed(0)
    policy = build_model(POLICY, tokenizer, seed=0)
    ref = copy.deepcopy(policy)
    config = LlamaConfig(**{**policy.config.to_dict(), "num_labels": 1})
    reward = LlamaForSequenceClassification(config)
    value = LlamaForSequenceClassification(config)
    return policy, ref, reward, value


def bench_embiggen(tokenizer, prompts, steps: int) -> float:
    policy, ref, reward, _ = build_models(tokenizer)
    cfg = PPOConfig(batch_size=BATCH, minibatch_size=BATCH, ppo_epochs=EPOCHS, max_new_tokens=RESPONSE_LENGTH,
                    optim=replace(PPOConfig().optim, lr=1e-5), ptx_coef=0.0, kl_coef=0.05)
    rm = RewardModel(reward.eval(), tokenizer, {}, None, None)
    trainer = PPOTrainer(policy, ref, tokenizer, rm, Labeler(), cfg, device="cpu", seed=0)
    trainer.step(prompts[:BATCH])  # warm-up
    t = time.perf_counter()
    for i in range(steps):
        trainer.step(prompts[BATCH * (i + 1): BATCH * (i + 2)])
    return steps * BATCH / (time.perf_counter() - t)


def bench_trl(tokenizer, prompts, steps: int) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.ppo import PPOConfig as TRLConfig
    from trl.experimental.ppo import PPOTrainer as TRLTrainer

    policy, ref, reward, value = build_models(tokenizer)
    ids = [tokenizer(chat_prompt(tokenizer, e.instruction), add_special_tokens=False)["input_ids"] for e in prompts]
    dataset = Dataset.from_dict({"input_ids": ids[: BATCH * (steps + 1)]})
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = TRLConfig(output_dir=out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                         num_mini_batches=1, num_ppo_epochs=EPOCHS, response_length=RESPONSE_LENGTH,
                         total_episodes=BATCH * (steps + 1), stop_token="eos", temperature=1.0, learning_rate=1e-5,
                         kl_coef=0.05, local_rollout_forward_batch_size=BATCH, num_sample_generations=0,
                         report_to=[], save_strategy="no", logging_steps=10_000, use_cpu=True, seed=0,
                         dataloader_num_workers=0, missing_eos_penalty=1.0)
        trainer = TRLTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                             value_model=value, train_dataset=dataset, callbacks=[Clock()])
        trainer.train()
    if len(stamps) < 2:
        raise RuntimeError(f"TRL ran {len(stamps)} steps; cannot time it")
    return (len(stamps) - 1) * BATCH / (stamps[-1] - stamps[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed PPO steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $EMBIGGEN_THREADS or all)")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL even if it is installed")
    args = parser.parse_args()

    threads = set_threads(args.threads)
    preset, tokenizer = laptop_tokenizer()
    prompts = data_splits(preset).ppo[: BATCH * (args.steps + 2)]
    policy, *_ = build_models(tokenizer)
    print(f"threads={threads} policy_params={policy.num_parameters():,} batch={BATCH} response_length={RESPONSE_LENGTH} "
          f"ppo_epochs={EPOCHS} minibatches=1 timed_steps={args.steps}")
    ours = bench_embiggen(tokenizer, prompts, args.steps)
    print(f"embiggen_episodes_per_second={ours:.1f}")
    if args.no_trl:
        return
    trl = import_trl("PPOTrainer")
    if trl is None:
        return
    theirs = bench_trl(tokenizer, prompts, args.steps)
    print(f"trl_version={trl.__version__} trl_episodes_per_second={theirs:.1f}")
    print(f"speedup={ours / theirs:.2f}x")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
