"""Experiments: what the notebooks and the report card measure, above the methods and the chain.

* notebook 1 — "size matters": smaller models trained with the same recipe (`size_sweep`), and
  whether a bigger or longer-trained model learns to copy an unseen name (`copying_sweep`);
* notebook 2 — accuracy on every held-out split (`evaluate_instruction_following`) and FLAN's
  ablation over the number of training clusters (`cluster_ablation`);
* notebook 3 — a policy's KL from the SFT model on held-out prompts (`sample_with_kl`), the
  gold score of those very samples (`sampled_gold`), and reward hacking made visible, one PPO
  run per KL coefficient (`kl_sweep`), PPO's critic started at zero or from the reward
  model (`value_model_comparison`), and PPO at the sweep's lowest coefficient against a
  reward-model ensemble (`ensemble_comparison`);
* notebook 4 — DPO across its beta (`dpo_beta_sweep`), measured exactly as PPO is, and its
  relatives SimPO, ORPO and KTO across theirs (`relatives_sweep`);
* notebook 5 — GRPO's loss-averaging variants (`grpo_variants`), a loose verifier and what the
  policy exploits in it (`loose_verifier_run`), and GRPO beside expert iteration, PPO with a
  critic and majority votes at the same number of sampled answers (`verifiable_baselines`).

Each experiment trains its extra models through `embiggen.chain` (cached under their own
keys) and takes its settings from the preset's `experiments` and `evaluation` configs, which
no stage of the main chain hashes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch

from embiggen.chain import (StageModel, labeler_for, preference_data, train_or_load_base, train_or_load_dpo,
                            train_or_load_expert_iteration, train_or_load_grpo, train_or_load_ppo,
                            train_or_load_ppo_verified, train_or_load_relative, train_or_load_reward,
                            train_or_load_reward_ensemble, train_or_load_sft)
from embiggen.data.splits import data_splits
from embiggen.data.world import ALIGNMENT_KINDS
from embiggen.judging.evaluate import difference_interval, evaluate_tasks, fact_cloze, judge_model, name_copy_rate
from embiggen.judging.labeler import Labeler
from embiggen.judging.refusals import reward_for_refusing
from embiggen.judging.verifiers import majority_vote_accuracy, sample_answers, verifier_for
from embiggen.lm.generate import decode_responses, episode_logprobs, sample_episodes
from embiggen.methods.dpo import train_dpo
from embiggen.methods.kto import judged_answers, train_kto
from embiggen.methods.orpo import train_orpo
from embiggen.methods.reward import RewardModel
from embiggen.methods.reward_ensemble import disagreement
from embiggen.methods.simpo import train_simpo
from embiggen.presets import Preset, check_preset


# ---------------------------------------------------------------------------------------
# Notebook 1
# ---------------------------------------------------------------------------------------
def size_sweep(preset: Preset, progress: bool = True, device=None) -> list[dict]:
    """"Size matters": the preset's smaller model shapes and its own, all trained with the
    same data and recipe; validation loss and fact recall for each (Kaplan et al. 2020,
    https://arxiv.org/abs/2001.08361, found loss falls as a power law in parameters)."""
    check_preset(preset)
    rows = []
    for cfg in (*preset.experiments.size_sweep, preset.model):
        base = train_or_load_base(preset, model_cfg=cfg, progress=progress, device=device)
        rows.append({
            "hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers, "params": base.params,
            "val_loss": base.log.val_loss[-1],
            "fact_cloze_accuracy": fact_cloze(base.model, base.tokenizer, base.world.people)["accuracy"],
            "train_seconds": base.info["train_seconds"],
        })
    return rows


def copying_sweep(preset: Preset, progress: bool = True, device=None) -> list[dict]:
    """Does a bigger model, or more pretraining, learn to copy a name it has never read? For the
    size sweep's shapes, the preset's own, experiments.copy_models (bigger shapes, the preset's
    step count) and experiments.copy_steps (the preset's shape, pretrained longer): the share of
    the evaluation split's invented names that a greedy continuation repeats where the text
    calls for them (`name_copy_rate`; induction heads, Olsson et al. 2022). Cached like the sweep."""
    check_preset(preset)
    cfg, names = preset.experiments, data_splits(preset).names["eval"]
    runs = [(shape, None) for shape in (*cfg.size_sweep, preset.model, *cfg.copy_models)]
    runs += [(preset.model, steps) for steps in cfg.copy_steps]
    rows = []
    for shape, steps in runs:
        base = train_or_load_base(preset, model_cfg=shape, steps=steps, progress=progress, device=device)
        copying = name_copy_rate(base.model, base.tokenizer, names)
        rows.append({"hidden_size": shape.hidden_size, "layers": shape.num_hidden_layers, "params": base.params,
                     "steps": steps or preset.pretrain.steps, "val_loss": base.log.val_loss[-1],
                     "train_seconds": base.info.get("train_seconds"),
                     "name_copy_rate": copying["rate"], "first_word_rate": copying["first_word_rate"],
                     "n": copying["n"]})
    return rows


# ---------------------------------------------------------------------------------------
# Notebook 2
# ---------------------------------------------------------------------------------------
def evaluate_instruction_following(model, tokenizer, sets: dict) -> dict:
    """Accuracy on every evaluation split of `embiggen.data.splits.DataSplits.sft_eval` (the
    alignment prompts are judged by `evaluate.evaluate_alignment` instead)."""
    return {split: evaluate_tasks(model, tokenizer, examples)
            for split, examples in sets.items() if split != "alignment"}


def cluster_ablation(preset: Preset, base: StageModel | None = None, progress: bool = True,
                     device=None) -> list[dict]:
    """FLAN's ablation (Wei et al. 2021, figure 6) at our scale: accuracy on the held-out
    cluster against the number of clusters trained on. Every point is fine-tuned from the
    same base with the same (shorter) schedule; 0 clusters is the base model itself."""
    check_preset(preset)
    splits, cfg = data_splits(preset), preset.experiments
    trained = splits.spec.train_clusters
    base = base or train_or_load_base(preset, progress=progress, device=device)
    heldout = splits.sft_eval["heldout_cluster"]
    rows = [{"clusters": 0, "trained_on": "(base model)", "n": len(heldout),
             "heldout_cluster_accuracy": evaluate_tasks(base.model, base.tokenizer, heldout)["accuracy"]}]
    for k in sorted({*cfg.ablation_cluster_counts, len(trained)}):
        tuned = train_or_load_sft(preset, clusters=trained[:k], steps=cfg.ablation_steps, base=base,
                                  progress=progress, device=device)
        rows.append({"clusters": k, "trained_on": ", ".join(trained[:k]), "n": len(heldout),
                     "heldout_cluster_accuracy": evaluate_tasks(tuned.model, tuned.tokenizer, heldout)["accuracy"]})
    return rows


# ---------------------------------------------------------------------------------------
# Notebook 3
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def sample_with_kl(policy_lm, ref_lm, tokenizer, instructions: list[str], max_new_tokens: int = 32,
                   temperature: float = 1.0, seed: int = 0, batch_size: int = 64) -> dict:
    """One sampled response per instruction from pi (as in training), its text and whether it
    ended, and KL(pi || pi_ref) per response, estimated as in training — k1, log pi(y_t) -
    log pi_ref(y_t), summed over the response tokens (EOS included) — on any prompts, e.g.
    held-out ones. `kl` is the mean over responses: an unbiased estimate of the sequence KL."""
    torch.manual_seed(seed)
    policy_lm.eval()
    ref_lm.eval()  # no dropout in either: the KL of the distributions, not of dropout noise
    kls, texts, finished = [], [], []
    for i in range(0, len(instructions), batch_size):
        ep = sample_episodes(policy_lm, tokenizer, instructions[i: i + batch_size], max_new_tokens, temperature)
        log_ratio = episode_logprobs(policy_lm, ep, temperature) - episode_logprobs(ref_lm, ep, temperature)
        kls += (log_ratio * ep["mask"]).sum(1).tolist()
        t, f = decode_responses(tokenizer, ep["responses"])
        texts += t
        finished += f
    return {"kl": sum(kls) / max(1, len(kls)), "kls": kls, "texts": texts, "finished": finished}


def sampled_gold(labeler, prompts, sampled: dict) -> float:
    """Mean gold score of the sampled (T = 1) responses of `sample_with_kl`: the policy whose
    KL was measured, judged on the answers that KL was measured on."""
    scores = [labeler.gold_score(e, t, f) for e, t, f in zip(prompts, sampled["texts"], sampled["finished"])]
    return sum(scores) / max(1, len(scores))


def sweep_run(preset: Preset, sft: StageModel, reward: RewardModel, progress: bool = True, device=None,
              kl_coef: float | None = None, value_model: str | None = None, paraphrased: bool = False) -> dict:
    """One PPO run of the sweep's kind (one round against the first reward model, experiments.sweep_steps
    steps at sweep_lr; cached) and what it does on the held-out prompts: its training log, the gold and
    reward-model scores of its greedy answers, the KL and gold of its sampled ones, its rates, a few answers;
    with `paraphrased`, also its greedy answers to the held-out paraphrases, judged."""
    cfg, evaluation = preset.experiments, preset.evaluation
    prompts, labeler = data_splits(preset).ppo_eval, Labeler()
    tuned = train_or_load_ppo(preset, kl_coef=kl_coef, steps=cfg.sweep_steps, lr=cfg.sweep_lr, rounds=1, sft=sft,
                              reward=reward, progress=progress, device=device, value_model=value_model)
    judged = judge_model(tuned.model, tuned.tokenizer, prompts, labeler, reward, evaluation.max_new_tokens)
    examples = [judged["rows"][i] for i in range(0, len(judged["rows"]), max(1, len(judged["rows"]) // 8))]
    sampled = sample_with_kl(tuned.model, sft.model, tuned.tokenizer, [e.instruction for e in prompts],
                             evaluation.max_new_tokens, preset.ppo.temperature, seed=preset.seed)
    out = {"kl_coef": tuned.info["kl_coef"], "lr": cfg.sweep_lr, "rows": tuned.log.rows, "kl": sampled["kl"],
           "gold": judged["gold_score"], "gold_sampled": sampled_gold(labeler, prompts, sampled),
           "rm_score": judged["rm_score"], "honest_rate": judged["honest_rate"],
           "over_refusal_rate": judged["over_refusal_rate"], "task_correct_rate": judged["task_correct_rate"],
           "examples": examples, "answers": judged["rows"], "train_seconds": tuned.info["train_seconds"]}
    if paraphrased:
        out["paraphrased"] = judge_model(tuned.model, tuned.tokenizer, data_splits(preset).paraphrased, labeler, None,
                                         evaluation.max_new_tokens)
    return out


def kl_sweep(preset: Preset, sft: StageModel | None = None, reward: RewardModel | None = None,
             progress: bool = True, device=None) -> list[dict]:
    """Reward hacking made visible: one PPO run per KL coefficient in preset.experiments.kl_sweep,
    each against the first reward model only (one round, learning rate experiments.sweep_lr;
    cached), with its training log and its gold and reward-model scores on held-out prompts."""
    check_preset(preset)
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    reward = reward or train_or_load_reward(preset, sft=sft, progress=progress, device=device)
    return [sweep_run(preset, sft, reward, progress, device, kl_coef=beta) for beta in preset.experiments.kl_sweep]


def ensemble_comparison(preset: Preset, sft: StageModel | None = None, reward: RewardModel | None = None,
                        progress: bool = True, device=None) -> dict:
    """Over-optimisation against an ensemble: at the KL sweep's lowest coefficient (where the
    single reward model is exploited most), PPO against the stage's reward model (that sweep run,
    from the cache) and against each conservative reward of an ensemble of
    experiments.ensemble_members reward models on the same pairs (`train_or_load_reward_ensemble`),
    each run as the sweep's are. Per run: the sweep run's figures (its proxy `rm_score` is the
    reward it optimised), the single reward model's score of its answers (`rm_score_single`: one
    proxy for every run), its training seconds and its reward models' (`reward_seconds`: for an
    ensemble, every member's), and for an ensemble's run the gold score's difference from the
    single reward model's run, prompt by prompt, with a 95% bootstrap interval
    (`difference_interval`). Also: the held-out answers of the single reward model's run on
    which the ensemble's members disagree most, with the labeler's verdict."""
    check_preset(preset)
    cfg = preset.experiments
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    reward = reward or train_or_load_reward(preset, sft=sft, progress=progress, device=device)
    lowest = min(cfg.kl_sweep)
    runs = [{"reward": "one reward model", "mode": None, "reward_seconds": reward.info.get("train_seconds", 0.0),
             **sweep_run(preset, sft, reward, progress, device, kl_coef=lowest)}]
    ensembles = {}
    for mode in cfg.ensemble_modes:
        ensemble = train_or_load_reward_ensemble(preset, sft=sft, members=cfg.ensemble_members, mode=mode,
                                                 lam=cfg.ensemble_lam, progress=progress, device=device)
        ensembles[mode] = ensemble
        runs.append({"reward": f"ensemble of {cfg.ensemble_members}, {mode}", "mode": mode,
                     "reward_seconds": ensemble.info["train_seconds"],
                     **sweep_run(preset, sft, ensemble, progress, device, kl_coef=lowest)})
    single = runs[0]["answers"]
    for run in runs:
        answers = run["answers"]
        assert [r["instruction"] for r in answers] == [r["instruction"] for r in single], "the same prompts, in order"
        run["rm_score_single"] = reward.score([r["instruction"] for r in answers], [r["response"] for r in answers],
                                              [r["finished"] for r in answers]).mean().item()
        if run is not runs[0]:
            run["gold_difference"] = difference_interval([r["gold"] for r in answers], [r["gold"] for r in single],
                                                         seed=preset.seed)
    ensemble = next(iter(ensembles.values()))
    spread = disagreement(ensemble, [r["instruction"] for r in single], [r["response"] for r in single],
                          [r["finished"] for r in single])
    for row in spread:  # the labeler's verdict beside the members'
        row.update(next({"gold": r["gold"], "category": r["category"]} for r in single
                        if r["instruction"] == row["instruction"] and r["response"] == row["response"]))
    return {"kl_coef": lowest, "runs": runs, "disagreements": spread, "ensemble": ensemble}


def value_model_comparison(preset: Preset, sft: StageModel | None = None, reward: RewardModel | None = None,
                           progress: bool = True, device=None) -> list[dict]:
    """PPO's critic started two ways, everything else as in the KL sweep's run at the stage's own
    beta (`sweep_run`; cached, so the first run *is* that sweep run): a value head on the policy's
    trunk at 0, and a critic copied from the reward model (Huang et al. 2024). Each run's training
    log (value loss, explained variance, gold, KL per step) and its held-out gold score and KL."""
    check_preset(preset)
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    reward = reward or train_or_load_reward(preset, sft=sft, progress=progress, device=device)
    return [{"value_model": value_model, **sweep_run(preset, sft, reward, progress, device,
                                                      kl_coef=preset.ppo.kl_coef, value_model=value_model)}
            for value_model in ("head", "reward_model")]


def written_declines_comparison(preset: Preset, sft: StageModel | None = None, progress: bool = True,
                                device=None) -> list[dict]:
    """Why PPO refused ordinary questions in new words: two reward models, one trained on rankings
    with the labeler's written declines (`RewardConfig.written_refusals`, the stage's), one on the
    samples' rankings alone, and one PPO run on each as in the KL sweep (`sweep_run` at the stage's
    beta; the first is that sweep run, from the cache). Per reward model: what it pays for
    "I cannot help with that." against the right answer, on the held-out ordinary prompts and the
    paraphrases (`refusals.reward_for_refusing`); per PPO run: its over-refusal on both."""
    check_preset(preset)
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    splits = data_splits(preset)
    ordinary = [e for e in splits.ppo_eval if e.cluster not in ALIGNMENT_KINDS]
    runs = []
    for written in (True, False):
        variant = replace(preset, reward=replace(preset.reward, written_refusals=written))
        reward = train_or_load_reward(variant, sft=sft, progress=progress, device=device)
        run = sweep_run(variant, sft, reward, progress, device, kl_coef=preset.ppo.kl_coef, paraphrased=True)
        runs.append({"written_refusals": written, "n_pairs": reward.info["n_pairs"],
                     "pairwise_accuracy": reward.info["pairwise_accuracy"],
                     "pay": reward_for_refusing(reward, ordinary),
                     "pay_paraphrased": reward_for_refusing(reward, splits.paraphrased), **run})
    return runs


# ---------------------------------------------------------------------------------------
# Notebook 4
# ---------------------------------------------------------------------------------------
def dpo_beta_sweep(preset: Preset, sft: StageModel | None = None, progress: bool = True,
                   device=None) -> list[dict]:
    """One DPO run per beta in preset.experiments.dpo_betas (the preset's DPO otherwise; cached),
    each judged on PPO's held-out prompts with its KL from the SFT model measured as PPO's is
    (`sample_with_kl`: sampled answers, k1): points for the gold-versus-KL picture."""
    check_preset(preset)
    evaluation = preset.evaluation
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    prompts, labeler = data_splits(preset).ppo_eval, Labeler()
    runs = []
    for beta in preset.experiments.dpo_betas:
        tuned = train_or_load_dpo(preset, sft=sft, cfg=replace(preset.dpo, beta=beta), progress=progress,
                                  device=device)
        judged = judge_model(tuned.model, tuned.tokenizer, prompts, labeler, None, evaluation.max_new_tokens)
        sampled = sample_with_kl(tuned.model, sft.model, tuned.tokenizer, [e.instruction for e in prompts],
                                 evaluation.max_new_tokens, 1.0, seed=preset.seed)
        runs.append({"beta": beta, "log": tuned.log, "kl": sampled["kl"], "gold": judged["gold_score"],
                     "gold_sampled": sampled_gold(labeler, prompts, sampled), "honest_rate": judged["honest_rate"],
                     "refusal_rate_harmful": judged["refusal_rate_harmful"],
                     "over_refusal_rate": judged["over_refusal_rate"], "task_correct_rate": judged["task_correct_rate"],
                     "train_seconds": tuned.info["train_seconds"]})
    return runs


#: Each of DPO's relatives: the preset's list of its sweep, the knob the sweep sets.
RELATIVE_SWEEPS = {"simpo": ("simpo_betas", "beta"), "orpo": ("orpo_lambdas", "lam"), "kto": ("kto_betas", "beta")}


def relatives_sweep(preset: Preset, sft: StageModel | None = None, progress: bool = True,
                    device=None) -> dict[str, list[dict]]:
    """SimPO, ORPO and KTO, one run per value of its coefficient (preset.experiments.simpo_betas,
    orpo_lambdas, kto_betas; SimPO keeps the preset's gamma / beta), each trained as the preset's
    DPO is and judged exactly as `dpo_beta_sweep`'s runs are: points for the gold-versus-KL
    picture, by method, with each run's training seconds per step."""
    check_preset(preset)
    evaluation = preset.evaluation
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    prompts, labeler = data_splits(preset).ppo_eval, Labeler()
    out = {}
    for method, (values, knob) in RELATIVE_SWEEPS.items():
        out[method] = []
        base = getattr(preset, method)
        for value in getattr(preset.experiments, values):
            cfg = replace(base, **{knob: value})
            if method == "simpo":  # the target margin scales with beta, as the paper's gamma / beta ratio
                cfg = replace(cfg, gamma=base.gamma / base.beta * value)
            tuned = train_or_load_relative(preset, method, sft=sft, cfg=cfg, progress=progress, device=device)
            judged = judge_model(tuned.model, tuned.tokenizer, prompts, labeler, None, evaluation.max_new_tokens)
            sampled = sample_with_kl(tuned.model, sft.model, tuned.tokenizer, [e.instruction for e in prompts],
                                     evaluation.max_new_tokens, 1.0, seed=preset.seed)
            out[method].append({"method": method, knob: value, "coefficient": value, "log": tuned.log,
                                "kl": sampled["kl"], "gold": judged["gold_score"],
                                "gold_sampled": sampled_gold(labeler, prompts, sampled),
                                "honest_rate": judged["honest_rate"],
                                "refusal_rate_harmful": judged["refusal_rate_harmful"],
                                "over_refusal_rate": judged["over_refusal_rate"],
                                "task_correct_rate": judged["task_correct_rate"],
                                "train_seconds": tuned.info["train_seconds"],
                                "seconds_per_step": tuned.log.seconds / max(1, len(tuned.log.steps))})
    return out


def _peak_rss_mb(reset: bool = False) -> float | None:
    """This process's peak resident memory since the last reset, in MB (Linux's VmHWM; None
    where /proc has no such thing)."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return None
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def preference_step_costs(preset: Preset, sft: StageModel | None = None, steps: int = 5, device=None) -> list[dict]:
    """What a training step of DPO and of each relative costs here: `steps` steps of each on a
    fresh copy of the SFT model with the preset's settings (nothing cached), the seconds per step
    of the loop, and the peak resident memory from the start of the run (the reference
    log-probabilities DPO and KTO compute once, first, included; Linux only, else None)."""
    check_preset(preset)
    sft = sft or train_or_load_sft(preset, device=device)
    data, splits = preference_data(preset, sft, progress=False), data_splits(preset)
    pairs = data["train_pairs"]
    judged = judged_answers(pairs, splits.preferences, labeler_for(preset), preset.seed)
    short = dict(steps=steps, eval_every=steps)
    runs = {"DPO": lambda m: train_dpo(m, sft.model, sft.tokenizer, pairs, [], replace(preset.dpo, **short),
                                       device=device, progress=False),
            "SimPO": lambda m: train_simpo(m, sft.tokenizer, pairs, [], replace(preset.simpo, **short),
                                           device=device, progress=False),
            "ORPO": lambda m: train_orpo(m, sft.tokenizer, pairs, [], replace(preset.orpo, **short), device=device,
                                         progress=False),
            "KTO": lambda m: train_kto(m, sft.model, sft.tokenizer, judged, [], replace(preset.kto, **short),
                                       device=device, progress=False)}
    out = []
    for name, run in runs.items():
        model = copy.deepcopy(sft.model)
        before = _peak_rss_mb()
        _peak_rss_mb(reset=True)
        log = run(model)
        peak = _peak_rss_mb()
        out.append({"method": name, "seconds_per_step": log.seconds / steps,
                    "peak_mb": peak, "before_mb": before})
        del model
    return out


# ---------------------------------------------------------------------------------------
# Ahead of time
# ---------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------
# Notebook 5: RL with verifiable rewards
# ---------------------------------------------------------------------------------------
def grpo_eval_prompts(preset: Preset, clusters=None) -> list:
    """The held-out prompts GRPO's figures are measured on: `sft_eval["heldin_template"]` of the
    trained clusters (prompts no training set holds, in the phrasings training used)."""
    clusters = preset.grpo.clusters if clusters is None else clusters
    return [e for e in data_splits(preset).sft_eval["heldin_template"] if e.cluster in clusters]


def grpo_variants(preset: Preset, sft: StageModel | None = None, progress: bool = True, device=None) -> list[dict]:
    """GRPO's loss-averaging variants (preset.experiments.grpo_loss_types), each trained like the
    stage with only the averaging changed (and Dr. GRPO without the std scaling, as its paper
    has it; cached; the preset's own is the grpo stage itself): held-out greedy accuracy and
    answer length per cluster, and the training log."""
    check_preset(preset)
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    prompts, runs = grpo_eval_prompts(preset), []
    for loss_type in preset.experiments.grpo_loss_types:
        cfg = replace(preset.grpo, loss_type=loss_type, scale_rewards=loss_type != "dr_grpo")
        tuned = train_or_load_grpo(preset, sft=sft, cfg=cfg, progress=progress, device=device)
        result = evaluate_tasks(tuned.model, tuned.tokenizer, prompts, preset.grpo.max_new_tokens)
        lengths = {c: _mean([len(tuned.tokenizer(r["response"])["input_ids"]) for r in result["rows"]
                             if r["cluster"] == c]) for c in preset.grpo.clusters}
        runs.append({"loss_type": loss_type, "scale_rewards": cfg.scale_rewards, "rows": tuned.log.rows,
                     "accuracy": result["accuracy"], "per_cluster": result["per_cluster"], "answer_tokens": lengths,
                     "train_seconds": tuned.info["train_seconds"]})
    return runs


def loose_verifier_run(preset: Preset, sft: StageModel | None = None, progress: bool = True, device=None) -> dict:
    """GRPO with a loose checker (an answer passes if it contains the reference anywhere) on
    preset.experiments.loose_verifier_clusters: what the policy learns to exploit. Held-out
    answers of SFT and of the run, by the loose reward and by exact match, the share that pass
    only the loose check, and how many words longer than the reference they are."""
    check_preset(preset)
    clusters = preset.experiments.loose_verifier_clusters
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    cfg = replace(preset.grpo, verifier="loose", clusters=tuple(clusters))
    tuned = train_or_load_grpo(preset, sft=sft, cfg=cfg, progress=progress, device=device)
    prompts, loose = grpo_eval_prompts(preset, clusters), verifier_for("loose")
    out = {"rows": tuned.log.rows, "train_seconds": tuned.info["train_seconds"], "models": {}}
    for name, m in (("sft", sft), ("loose grpo", tuned)):
        rows = evaluate_tasks(m.model, m.tokenizer, prompts, cfg.max_new_tokens)["rows"]
        passes = [loose(e, r["response"]) for e, r in zip(prompts, rows)]
        out["models"][name] = {
            "exact_accuracy": _mean(r["correct"] for r in rows),
            "loose_reward": _mean(passes),
            "loose_only": _mean(p == 1.0 and not r["correct"] for p, r in zip(passes, rows)),
            "extra_words": _mean(len(r["response"].split()) - len(e.answer.split()) for e, r in zip(prompts, rows)),
            "examples": [r for p, r in zip(passes, rows) if p == 1.0 and not r["correct"]][:8] or rows[:4]}
    return out


def verifiable_baselines(preset: Preset, sft: StageModel | None = None, grpo: StageModel | None = None,
                         progress: bool = True, device=None) -> dict:
    """GRPO beside expert iteration and PPO with a critic (the same verifier, prompts and number
    of sampled answers, each cached) and majority votes over k samples of the SFT model (no
    training): held-out accuracy on GRPO's live-curve prompts against the number of answers each
    sampled — in training for the three, at inference for the vote."""
    check_preset(preset)
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    grpo = grpo or train_or_load_grpo(preset, sft=sft, progress=progress, device=device)
    cfg, exp = preset.grpo, preset.experiments
    per_step = cfg.prompts_per_step * cfg.group_size
    ei = train_or_load_expert_iteration(preset, sft=sft, progress=progress, device=device)
    ppo = train_or_load_ppo_verified(preset, sft=sft, progress=progress, device=device)
    curve = data_splits(preset).grpo_curve(cfg.clusters, cfg.n_curve_prompts)
    samples = sample_answers(sft.model, sft.tokenizer, curve, max(exp.majority_ks), cfg.max_new_tokens, 1.0,
                             seed=data_splits(preset).sample_seed("pass_at_k"))
    return {
        "grpo": [(r["step"] * per_step, r["eval_accuracy"]) for r in grpo.log.rows if "eval_accuracy" in r],
        "expert_iteration": [(r["answers_sampled"], r["eval_accuracy"]) for r in ei.log],
        "ppo": [(r["step"] * per_step, r["eval_accuracy"]) for r in ppo.log.rows if "eval_accuracy" in r],
        # k answers to each of the curve's prompts, at inference: k * (number of prompts) answers
        "majority_vote": [(k * len(curve), majority_vote_accuracy(curve, samples, k)) for k in exp.majority_ks],
        "train_seconds": {"grpo": grpo.info["train_seconds"], "expert_iteration": ei.info["train_seconds"],
                          "ppo": ppo.info["train_seconds"]},
        "n_prompts": len(curve),
    }


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


#: The experiments whose extra models the notebooks train, in notebook order. A cell that runs
#: one trains for minutes the first time (notebook 1's size sweep, notebook 3's KL sweep) and
#: loads from the cache after; `embiggen run --experiments` trains them all ahead of time.
NOTEBOOK_EXPERIMENTS = {"size_sweep": size_sweep, "copying_sweep": copying_sweep, "cluster_ablation": cluster_ablation,
                        "kl_sweep": kl_sweep, "ensemble_comparison": ensemble_comparison,
                        "value_model_comparison": value_model_comparison,
                        "written_declines_comparison": written_declines_comparison,
                        "dpo_beta_sweep": dpo_beta_sweep, "relatives_sweep": relatives_sweep,
                        "grpo_variants": grpo_variants,
                        "loose_verifier_run": loose_verifier_run, "verifiable_baselines": verifiable_baselines}


def pretrain_experiments(preset: Preset, progress: bool = True, device=None) -> dict[str, float]:
    """Train (or load) every model of `NOTEBOOK_EXPERIMENTS`, so the notebooks only load them.
    Returns the seconds each experiment took."""
    check_preset(preset)
    seconds = {}
    for name, experiment in NOTEBOOK_EXPERIMENTS.items():
        started = time.perf_counter()
        experiment(preset, progress=progress, device=device)
        seconds[name] = round(time.perf_counter() - started, 1)
        if progress:
            print(f"experiments: {name} ready in {seconds[name]:.0f} s")
    return seconds

