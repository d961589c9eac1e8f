"""Expert iteration: sample, keep what the verifier accepts, fine-tune on it, repeat.

The oldest way to learn from a checker needs no RL at all. Expert iteration (Anthony et al.
2017, https://arxiv.org/abs/1705.08439), STaR (Zelikman et al. 2022,
https://arxiv.org/abs/2203.14465) and rejection-sampling fine-tuning (RFT; Yuan et al. 2023,
https://arxiv.org/abs/2308.01825) all run

    for round r = 1 .. R:
        sample G answers y ~ pi_r(. | x) to each prompt x of the round
        keep the pairs (x, y) whose reward r(x, y) = 1
        pi_{r+1} = pi_r fine-tuned with the SFT loss on the kept pairs

Its gradient is GRPO's with every wrong answer's advantage set to 0 and every right answer's
to 1: it learns only from successes, has no baseline, and a prompt the model always gets right
keeps adding its easy answers. Beside GRPO on the same prompts and the same number of sampled
answers (notebook 5), it shows what the group baseline and the push *away* from wrong answers
buy.
"""

from __future__ import annotations

import time

from embiggen.data.tasks import TaskExample
from embiggen.judging.verifiers import sample_answers
from embiggen.methods.sft import sft
from embiggen.presets import SFTConfig


def verified_answers(model, tokenizer, prompts: list[TaskExample], group_size: int, verifier, max_new_tokens: int,
                     temperature: float = 1.0, seed: int = 0) -> tuple[list[TaskExample], dict]:
    """`group_size` sampled answers to each prompt; those the verifier accepts become
    demonstrations (the prompt with the model's own answer), each distinct answer once per
    prompt. Also how many were sampled, accepted and kept."""
    samples = sample_answers(model, tokenizer, prompts, group_size, max_new_tokens, temperature, seed)
    kept, accepted = [], 0
    for example, answers in zip(prompts, samples):
        good = [a for a in answers if verifier(example, a) == 1.0]
        accepted += len(good)
        kept += [TaskExample(example.cluster, example.template, example.instruction, a, example.meta)
                 for a in dict.fromkeys(good)]
    n = len(prompts) * group_size
    return kept, {"sampled": n, "accepted": accepted, "kept": len(kept), "reward": accepted / max(1, n)}


def expert_iteration(model, tokenizer, rounds: list[list[TaskExample]], verifier, sft_cfg: SFTConfig,
                     group_size: int, max_new_tokens: int, temperature: float = 1.0, seed: int = 0, device=None,
                     evaluate=None, callback=None, progress: bool = True) -> list[dict]:
    """Expert iteration on `model` in place: one round per list of prompts in `rounds`. Each round
    samples, keeps the verified answers and fine-tunes on them (`sft`, validated on a few of
    them). `evaluate(model)` (held-out figures) runs before the first round and after each;
    `callback(round, row)` after each. Returns one row per round (round 0: before training)."""
    rows = [{"round": 0, "answers_sampled": 0, **(evaluate(model) if evaluate else {})}]
    if callback is not None:
        callback(0, rows[0])
    sampled = 0
    for r, prompts in enumerate(rounds, start=1):
        started = time.perf_counter()
        kept, stats = verified_answers(model, tokenizer, prompts, group_size, verifier, max_new_tokens, temperature,
                                       seed=seed + r)
        sampled += stats["sampled"]
        if kept:
            sft(model, tokenizer, kept, kept[: max(1, len(kept) // 20)], sft_cfg, device=device, seed=seed + r,
                progress=progress, desc=f"expert iteration round {r}/{len(rounds)}: {len(kept)} verified answers")
        model.eval()
        row = {"round": r, "answers_sampled": sampled, **stats, "seconds": time.perf_counter() - started,
               **(evaluate(model) if evaluate else {})}
        rows.append(row)
        if callback is not None:
            callback(r, row)
    return rows
