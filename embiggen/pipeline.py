"""The whole chain as one registry of stages, and the report card that `embiggen run` prints.

A stage is one entry of `STAGES`: its name, the stages whose models it starts from, its
training config, how it trains or loads its model (`embiggen.chain`) and what it reports.
`run` walks the registry in order, loads or trains each model once and hands it to the
stages that need it; each stage evaluates on held-out data with the same functions the
notebooks call and adds its figures to the report under its own name. The CLI reads the
same registry. A new method is a new file, a `train_or_load_*` in `embiggen.chain`, a
report function here and one more entry in `STAGES`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from embiggen.chain import (RELATIVES, final_reward_model, train_or_load_base, train_or_load_dpo, train_or_load_grpo,
                            train_or_load_kto, train_or_load_orpo, train_or_load_ppo, train_or_load_reward,
                            train_or_load_sft, train_or_load_simpo, train_or_load_tools)
from embiggen.data.splits import data_splits, overlap
from embiggen.data.toolbox import TOOLS
from embiggen.data.world import ALIGNMENT_KINDS
from embiggen.errors import UserError, is_disk_full
from embiggen.experiments import evaluate_instruction_following, sample_with_kl, sampled_gold
from embiggen.judging.evaluate import (alignment_counts, alignment_rates, alignment_rates_by_kind, evaluate_alignment,
                                       evaluate_tasks, fact_cloze, instruction_answer_rate, judge_model, name_copy_rate,
                                       person_probe_rates, win_rate)
from embiggen.judging.labeler import Labeler
from embiggen.judging.refusals import reward_for_refusing
from embiggen.judging.verifiers import pass_at_k_curve, sample_answers
from embiggen.lm.generate import generation_progress
from embiggen.methods.reward import load_pairs, pairwise_accuracy
from embiggen.methods.tools import evaluate_with_tools
from embiggen.presets import Preset, check_preset
from embiggen.report import flatten, report_markdown
from embiggen.utils import DiskFull, atomic_write_text, cache_root, read_only


# ---------------------------------------------------------------------------------------
# What each stage reports: (preset, models by stage name, measured) -> figures
# ---------------------------------------------------------------------------------------
class Measured(dict):
    """What one run has measured so far, by (stage, measurement): a later stage's report
    reads an earlier one's figures for the same model on the same prompts (PPO's report
    judges the SFT model; DPO's compares against it and PPO) instead of measuring again."""

    def get_or_measure(self, stage: str, what: str, measure: Callable):
        if (stage, what) not in self:
            self[stage, what] = measure()
        return self[stage, what]


def heldin_accuracy(preset: Preset, models: dict, measured: Measured, stage: str) -> float:
    """Accuracy of stage `stage`'s model on the held-in-template tasks, measured once per run."""
    m = models[stage]
    return measured.get_or_measure(stage, "heldin_template_accuracy", lambda: evaluate_tasks(
        m.model, m.tokenizer, data_splits(preset).sft_eval["heldin_template"])["accuracy"])


def paraphrased(preset: Preset, models: dict, measured: Measured, stage: str) -> dict:
    """Stage `stage`'s greedy answers to the held-out paraphrases of ordinary questions
    (`DataSplits.paraphrased`), judged by the labeler, measured once per run: the over-refusal
    and task-correct rates overall and per group (known people, pretraining-only people,
    arithmetic, lists)."""
    m = models[stage]

    def measure():
        prompts = data_splits(preset).paraphrased
        judged = judge_model(m.model, m.tokenizer, prompts, Labeler(), None, preset.evaluation.max_new_tokens)
        groups = {}
        for e, row in zip(prompts, judged["rows"]):
            groups.setdefault(e.meta["group"], []).append(row)
        judged["by_group"] = {g: alignment_rates(rows) for g, rows in groups.items()}
        return judged
    return measured.get_or_measure(stage, "judged_paraphrased", measure)


def paraphrase_figures(judged: dict, suffix: str = "") -> dict:
    """The report's paraphrase figures from `paraphrased`: over_refusal_rate_paraphrased{suffix},
    task_correct_rate_paraphrased{suffix}, and the over-refusal rate per group."""
    r4 = lambda x: round(x, 4)  # noqa: E731
    return {f"over_refusal_rate_paraphrased{suffix}": r4(judged["over_refusal_rate"]),
            f"task_correct_rate_paraphrased{suffix}": r4(judged["task_correct_rate"]),
            f"over_refusal_rate_paraphrased_by_group{suffix}": {g: r4(v["over_refusal_rate"])
                                                                for g, v in judged["by_group"].items()}}


def report_base(preset: Preset, models: dict, measured: Measured) -> dict:
    base = models["base"]
    cloze = fact_cloze(base.model, base.tokenizer, base.world.people)
    answers = instruction_answer_rate(base.model, base.tokenizer, base.world, n=preset.evaluation.n_instruction_probes)
    copying = name_copy_rate(base.model, base.tokenizer, data_splits(preset).names["eval"])
    pretrained = base.info.get("source")  # a pretrained model loaded from there: nothing trained here
    return {
        "params": base.params,
        "trained": f"no: the pretrained model {pretrained}, loaded" if pretrained else "yes",
        "train_tokens": None if pretrained else base.info["train_tokens"],
        "train_seconds": None if pretrained else base.info["train_seconds"],
        "tokens_per_second": base.info["tokens_per_second"],
        "val_loss": round(base.info["val_loss"], 4),
        "fact_cloze_accuracy": round(cloze["accuracy"], 4),
        "n_fact_prompts": sum(cloze["per_attribute_count"].values()),
        "fact_cloze_per_attribute": {k: round(v, 4) for k, v in cloze["per_attribute"].items()},
        "instruction_answer_rate": round(answers["rate"], 4),
        "instruction_answer_rate_per_cluster": {k: round(v, 4) for k, v in answers["per_cluster"].items()},
        "n_instruction_prompts": sum(answers["per_cluster_count"].values()),
        "name_copy_rate": round(copying["rate"], 4),  # held-out invented names: never in the corpus
        "n_name_prompts": copying["n"],
        "name_copy_first_word_rate": round(copying["first_word_rate"], 4),
        "device": base.info["device"],
        "cache": base.info.get("source", str(base.path)),  # a pretrained base: where it was loaded from
    }


def report_sft(preset: Preset, models: dict, measured: Measured) -> dict:
    tuned, base = models["sft"], models["base"]
    sets = data_splits(preset).sft_eval
    after = evaluate_instruction_following(tuned.model, tuned.tokenizer, sets)
    measured["sft", "heldin_template_accuracy"] = after["heldin_template"]["accuracy"]
    before = evaluate_instruction_following(base.model, base.tokenizer, sets)
    hedges = evaluate_alignment(tuned.model, tuned.tokenizer, sets["alignment"])["hedge_rate"]
    per_cluster = {**after["heldin_template"]["per_cluster"], **after["heldout_cluster"]["per_cluster"]}
    return {
        "train_seconds": tuned.info["train_seconds"],
        "n_train": tuned.info["n_train"],
        "val_loss": round(tuned.info["val_loss"], 4),
        "heldin_template_accuracy": round(after["heldin_template"]["accuracy"], 4),
        "heldout_template_accuracy": round(after["heldout_template"]["accuracy"], 4),
        "heldout_cluster_accuracy": round(after["heldout_cluster"]["accuracy"], 4),
        "pretraining_only_fact_accuracy": round(after["pretraining_only_facts"]["accuracy"], 4),
        "per_cluster": {k: round(v, 4) for k, v in per_cluster.items()},
        "base_heldin_template_accuracy": round(before["heldin_template"]["accuracy"], 4),
        "base_heldout_template_accuracy": round(before["heldout_template"]["accuracy"], 4),
        "base_heldout_cluster_accuracy": round(before["heldout_cluster"]["accuracy"], 4),
        "base_pretraining_only_fact_accuracy": round(before["pretraining_only_facts"]["accuracy"], 4),
        "hedge_rate_unknown_person": round(hedges.get("unknown_person", 0.0), 4),
        "hedge_rate_medical": round(hedges.get("medical", 0.0), 4),
        "refusal_rate_harmful": round(hedges.get("harmful", 0.0), 4),
        "heldout_cluster": preset.sft.heldout_cluster,
        "n_eval_prompts": {which: len(sets[which]) for which in ("heldin_template", "heldout_template", "heldout_cluster",
                                                                "pretraining_only_facts")},
        "cache": str(tuned.path),
    }


def ordinary(prompts: list) -> list:
    """The ordinary tasks among `prompts` (not a question about someone unknown, medical or harmful)."""
    return [e for e in prompts if e.cluster not in ALIGNMENT_KINDS]


def report_rm(preset: Preset, models: dict, measured: Measured) -> dict:
    info, splits = models["rm"].info, data_splits(preset)
    # what the reward model pays for "I cannot help with that." to an answerable question, against the right answer
    refusing = reward_for_refusing(models["rm"], ordinary(splits.rm_eval))
    refusing_paraphrased = reward_for_refusing(models["rm"], splits.paraphrased)
    return {
        "train_seconds": info["train_seconds"],  # training; preference collection is collect_seconds
        "collect_seconds": info["collect_seconds"],
        "n_pairs": info["n_pairs"],
        "n_eval_pairs": info["n_eval_pairs"],
        "pairwise_accuracy": round(info["pairwise_accuracy"], 4),
        "margin": round(info["margin"], 4),
        "per_type_accuracy": {k: round(v, 4) for k, v in info["per_type_accuracy"].items()},
        "per_type_count": info["per_type_count"],
        "label_noise": preset.reward.label_noise,
        "refusal_preferred_rate": round(refusing["refusal_preferred"], 4),
        "refusal_preferred_rate_paraphrased": round(refusing_paraphrased["refusal_preferred"], 4),
        "refusal_reward_paraphrased": round(refusing_paraphrased["mean_refusal"], 4),
        "answer_reward_paraphrased": round(refusing_paraphrased["mean_answer"], 4),
        # ... and above a harmful request's answer ("Sure. Wait until night, ..."), which the labeler ranks higher
        "refusal_over_compliance_rate_paraphrased": round(refusing_paraphrased["refusal_over_compliance"], 4),
        "compliance_reward_paraphrased": round(refusing_paraphrased["mean_compliance"], 4),
        "n_refusal_prompts": len(refusing["refusal"]),
        # held-out pairs come from prompts no stage trains on: this counts any that slipped through
        "eval_train_overlap": overlap(splits.rm_eval, splits.training_sets()),
        "cache": str(models["rm"].path),
    }


#: The person probe's figures in the report: (group, outcome, short name).
PERSON_PROBE_FIGURES = [("known", "right fact", "right_fact"), ("pretraining_only", "right fact", "right_fact"),
                        ("never_seen", "I do not know them", "hedged"), ("world_style", "I do not know them", "hedged"),
                        ("never_seen", "I do not know who", "unnamed"), ("world_style", "I do not know who", "unnamed"),
                        ("never_seen", "someone else's name", "misnamed"),
                        ("world_style", "someone else's name", "misnamed")]


def report_ppo(preset: Preset, models: dict, measured: Measured) -> dict:
    tuned, sft_model, first_rm = models["ppo"], models["sft"], models["rm"]
    rm = final_reward_model(tuned, first_rm)  # the one PPO optimised in its last round
    policy_pairs = load_pairs(rm, "eval") if rm is not first_rm else []
    splits, labeler, cfg = data_splits(preset), Labeler(), preset.evaluation
    prompts = splits.ppo_eval
    compared = {"sft": (sft_model.model, sft_model.tokenizer), "ppo": (tuned.model, tuned.tokenizer)}
    judged = {name: judge_model(m, tok, prompts, labeler, rm, cfg.max_new_tokens) for name, (m, tok) in compared.items()}
    for name in compared:
        measured[name, "judged_ppo_eval"] = judged[name]  # DPO's report compares against these answers
    wins = win_rate(labeler, prompts, judged["ppo"]["rows"], judged["sft"]["rows"])
    sampled = sample_with_kl(tuned.model, sft_model.model, tuned.tokenizer, [e.instruction for e in prompts],
                             cfg.max_new_tokens, preset.ppo.temperature, seed=preset.seed)
    sft_sampled = sample_with_kl(sft_model.model, sft_model.model, sft_model.tokenizer,
                                 [e.instruction for e in prompts], cfg.max_new_tokens, preset.ppo.temperature,
                                 seed=preset.seed)
    seen = splits.seen_alignment()
    r4 = lambda x: round(x, 4)  # noqa: E731
    figures = {}  # gold_score_sft, gold_score_ppo, rm_score_sft, ...
    for name, (m, tok) in compared.items():
        j = judged[name]
        j["heldin_template_accuracy"] = heldin_accuracy(preset, models, measured, name)
        by_kind = alignment_rates_by_kind(j["rows"])
        j["honest_rate_unknown_person"], j["honest_rate_medical"] = by_kind["unknown_person"], by_kind["medical"]
        j["gold_score_sampled"] = sampled_gold(labeler, prompts, sampled if name == "ppo" else sft_sampled)
        for key in ("gold_score", "gold_score_sampled", "rm_score", "honest_rate", "honest_rate_unknown_person",
                    "honest_rate_medical", "named_rate_unknown_person", "misnamed_rate_unknown_person",
                    "refusal_rate_harmful", "over_refusal_rate", "heldin_template_accuracy"):
            figures[f"{key}_{name}"] = r4(j[key])
    # ordinary questions in words no template uses: PPO's figures under the plain names, SFT's with _sft
    figures.update({**paraphrase_figures(paraphrased(preset, models, measured, "ppo")),
                    **paraphrase_figures(paraphrased(preset, models, measured, "sft"), "_sft")})
    probe = {name: person_probe_rates(m, tok, splits.person_probe, labeler, cfg.max_new_tokens)
             for name, (m, tok) in compared.items()}
    seen_rates = {name: judge_model(m, tok, seen, labeler, None, cfg.max_new_tokens) for name, (m, tok) in compared.items()}
    evaluation = [*prompts, *splits.sft_eval["heldin_template"], *(e for g in splits.person_probe.values() for e in g),
                  *splits.paraphrased]
    return {
        "train_seconds": tuned.info["train_seconds"],
        "episodes": tuned.info["episodes"],
        "kl_coef": tuned.info["kl_coef"],
        **figures,
        "heldin_template_accuracy_change": r4(figures["heldin_template_accuracy_ppo"]
                                              - figures["heldin_template_accuracy_sft"]),
        "win_rate_vs_sft": r4(wins["win_rate"]),
        "win_tie_rate_vs_sft": r4(wins["win_tie_rate"]),
        "wins_ties_losses": [wins["wins"], wins["ties"], wins["losses"]],
        "kl": r4(sampled["kl"]),
        "n_eval_prompts": len(prompts),
        # what each rate above rests on: honest_rate on unknown people and medical questions, and so on
        "n_eval_prompts_per_rate": alignment_counts(judged["ppo"]["rows"]),
        # "language models (mostly) know what they know": the same fact questions about people the
        # model was taught about, read about only in pretraining, and never saw (two kinds of name)
        # (the right fact for people it knows; "I do not know <them>" for people it never saw)
        "person_probe": {f"{group}_{label}_{name}": r4(probe[name][group]["rates"][outcome])
                         for group, outcome, label in PERSON_PROBE_FIGURES for name in compared},
        # the same rates on PPO's *training* material (its names and templates): memorisation, not generalisation
        "seen_material": {f"{key}_{name}": r4(seen_rates[name][key]) for name in compared
                          for key in ("honest_rate", "refusal_rate_harmful")},
        # evaluation prompts (PPO's, the held-in tasks, the person probe) found in any training set
        "eval_train_overlap": overlap(evaluation, splits.training_sets()),
        "reward_model_rounds": tuned.info.get("rounds", 1),
        # on held-out pairs of the policy's own samples: the first reward model was never trained on such answers
        "rm_first_accuracy_on_policy_samples": r4(pairwise_accuracy(first_rm.model, first_rm.tokenizer,
                                                                    policy_pairs)["accuracy"]) if policy_pairs else None,
        "rm_final_accuracy_on_policy_samples": r4(rm.info["policy_pairwise_accuracy"]) if policy_pairs else None,
        "cache": str(tuned.path),
    }

def preference_figures(preset: Preset, models: dict, measured: Measured, name: str) -> dict:
    """What DPO and its relatives (`name`'s model) are judged by, on the held-out material PPO is
    judged on, beside SFT and PPO: the same greedy answers judged by the labeler, the same KL
    (sampled answers, k1, from the SFT model), the same held-in tasks, and the labeler's
    preference between this model's answer and each other's. SFT's and PPO's answers and scores
    are the ones their own reports measured, when this run measured them."""
    tuned, sft_model = models[name], models["sft"]
    load_stage(preset, "ppo", models, progress=False)
    splits, labeler, cfg = data_splits(preset), Labeler(), preset.evaluation
    prompts = splits.ppo_eval
    judged = {n: measured.get_or_measure(n, "judged_ppo_eval", lambda m=models[n]: judge_model(
        m.model, m.tokenizer, prompts, labeler, None, cfg.max_new_tokens)) for n in (name, "sft", "ppo")}
    sampled = sample_with_kl(tuned.model, sft_model.model, tuned.tokenizer, [e.instruction for e in prompts],
                             cfg.max_new_tokens, 1.0, seed=preset.seed)
    heldin, heldin_sft = (heldin_accuracy(preset, models, measured, n) for n in (name, "sft"))
    vs = {n: win_rate(labeler, prompts, judged[name]["rows"], judged[n]["rows"]) for n in ("sft", "ppo")}
    r4 = lambda x: round(x, 4)  # noqa: E731
    return {
        "kl": r4(sampled["kl"]),
        "gold_score": r4(judged[name]["gold_score"]),
        "gold_score_sampled": r4(sampled_gold(labeler, prompts, sampled)),
        "honest_rate": r4(judged[name]["honest_rate"]),
        "honest_rate_unknown_person": r4(alignment_rates_by_kind(judged[name]["rows"])["unknown_person"]),
        "named_rate_unknown_person": r4(judged[name]["named_rate_unknown_person"]),
        "misnamed_rate_unknown_person": r4(judged[name]["misnamed_rate_unknown_person"]),
        "refusal_rate_harmful": r4(judged[name]["refusal_rate_harmful"]),
        "over_refusal_rate": r4(judged[name]["over_refusal_rate"]),
        **paraphrase_figures(paraphrased(preset, models, measured, name)),
        "heldin_template_accuracy": r4(heldin),
        "heldin_template_accuracy_change": r4(heldin - heldin_sft),
        "win_rate_vs_sft": r4(vs["sft"]["win_rate"]),
        "win_rate_vs_ppo": r4(vs["ppo"]["win_rate"]),
        "wins_ties_losses_vs_sft": [vs["sft"]["wins"], vs["sft"]["ties"], vs["sft"]["losses"]],
        "wins_ties_losses_vs_ppo": [vs["ppo"]["wins"], vs["ppo"]["ties"], vs["ppo"]["losses"]],
        "n_eval_prompts": len(prompts),
        "cache": str(tuned.path),
    }


def report_dpo(preset: Preset, models: dict, measured: Measured) -> dict:
    """DPO beside SFT and PPO (`preference_figures`), with its beta and pairs."""
    tuned = models["dpo"]
    accuracy = tuned.info.get("val_reward_accuracy")
    return {"train_seconds": tuned.info["train_seconds"], "beta": tuned.info["beta"],
            "n_pairs": tuned.info["n_pairs"],  # of the last round, with iterated DPO
            "rounds": tuned.info.get("rounds", 1),
            "val_reward_accuracy": round(accuracy, 4) if accuracy else None,
            **preference_figures(preset, models, measured, "dpo")}


def report_relative(name: str) -> Callable:
    """The report of DPO's relative `name` (simpo, orpo or kto): DPO's figures
    (`preference_figures`, the same held-out material, beside SFT and PPO), with its coefficient
    and what it trained on (pairs; for KTO, single judged answers)."""
    def report(preset: Preset, models: dict, measured: Measured) -> dict:
        info = models[name].info
        trained_on = ({k: info[k] for k in ("n_answers", "n_desirable", "desirable_weight")} if name == "kto"
                      else {"n_pairs": info["n_pairs"]})
        held_out = "val_judged_accuracy" if name == "kto" else "val_reward_accuracy"  # of judged answers / of pairs
        accuracy = info.get(held_out)
        return {"train_seconds": info["train_seconds"], RELATIVES[name]: info[RELATIVES[name]], **trained_on,
                held_out: round(accuracy, 4) if accuracy is not None else None,
                **preference_figures(preset, models, measured, name)}
    report.__name__ = f"report_{name}"
    return report


def report_grpo(preset: Preset, models: dict, measured: Measured) -> dict:
    """GRPO on held-out prompts, beside the SFT model it started from: greedy accuracy per
    cluster in held-in templates (prompts no training set holds, phrasings training used) and in
    held-out templates (phrasings no stage trained on); pass@k of T = 1 samples on the trained
    clusters' prompts; the change on the clusters it did not train on; what it cost notebook 3's
    alignment (the same held-out prompts PPO is judged on); and its training curves in brief."""
    tuned, sft_model, cfg, evaluation = models["grpo"], models["sft"], preset.grpo, preset.evaluation
    splits, labeler = data_splits(preset), Labeler()
    compared = {"sft": sft_model, "grpo": tuned}
    accuracy = {}  # (model, template set) -> evaluate_tasks result
    for name, m in compared.items():
        for which in ("heldin_template", "heldout_template"):
            accuracy[name, which] = measured.get_or_measure(name, f"{which}_accuracy_tasks", lambda m=m, w=which: (
                evaluate_tasks(m.model, m.tokenizer, splits.sft_eval[w], evaluation.max_new_tokens)))
    trained = [c for c in cfg.clusters]
    others = [c for c in splits.spec.train_clusters if c not in trained]
    heldout_cluster = {name: evaluate_tasks(m.model, m.tokenizer, splits.sft_eval["heldout_cluster"],
                                            evaluation.max_new_tokens)["accuracy"] for name, m in compared.items()}

    def untrained_accuracy(name: str) -> float:  # every untrained cluster's prompts, both template sets, and fact_check
        rows = [r for w in ("heldin_template", "heldout_template") for r in accuracy[name, w]["rows"]
                if r["cluster"] in others]
        n_heldout = len(splits.sft_eval["heldout_cluster"])
        return (sum(r["correct"] for r in rows) + heldout_cluster[name] * n_heldout) / (len(rows) + n_heldout)

    passes = {name: {} for name in compared}  # pass@k of T = 1 samples, on the trained clusters' prompts
    for which in ("heldin_template", "heldout_template"):
        prompts = [e for e in splits.sft_eval[which] if e.cluster in trained]
        for name, m in compared.items():
            samples = sample_answers(m.model, m.tokenizer, prompts, evaluation.n_pass_samples, evaluation.max_new_tokens,
                                     1.0, seed=splits.sample_seed("pass_at_k"))
            passes[name][which] = pass_at_k_curve(prompts, samples, evaluation.pass_k)
    judged = {name: measured.get_or_measure(name, "judged_ppo_eval", lambda m=m: judge_model(
        m.model, m.tokenizer, splits.ppo_eval, labeler, None, evaluation.max_new_tokens)) for name, m in compared.items()}
    kl = sample_with_kl(tuned.model, sft_model.model, tuned.tokenizer,
                        [e.instruction for e in splits.sft_eval["heldin_template"] if e.cluster in trained],
                        evaluation.max_new_tokens, cfg.temperature, seed=preset.seed)["kl"]
    rows = tuned.log.rows[1:]  # step 0 holds only the curve's first evaluation
    first, last = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10):]
    mean = lambda rs, key: sum(r[key] for r in rs) / max(1, len(rs))  # noqa: E731
    r4 = lambda x: round(x, 4)  # noqa: E731
    alignment = {f"{key}_{name}": r4(judged[name][key]) for name in compared
                 for key in ("honest_rate", "refusal_rate_harmful", "over_refusal_rate")}
    alignment.update(paraphrase_figures(paraphrased(preset, models, measured, "grpo")))
    evaluation_prompts = [*splits.sft_eval["heldin_template"], *splits.sft_eval["heldout_template"],
                          *splits.sft_eval["heldout_cluster"], *splits.ppo_eval, *splits.paraphrased]
    return {
        "train_seconds": tuned.info["train_seconds"],
        "steps": tuned.info["steps"],
        "answers_sampled": tuned.info["answers_sampled"],
        "clusters": ", ".join(trained),
        **{f"heldin_template_accuracy_{name}": {c: r4(v) for c, v in accuracy[name, "heldin_template"]["per_cluster"].items()}
           for name in compared},
        **{f"heldout_template_accuracy_{name}": {c: r4(v) for c, v in accuracy[name, "heldout_template"]["per_cluster"].items()}
           for name in compared},
        **{f"pass_at_k_{name}": {w: {str(k): r4(v) for k, v in passes[name][w]["pass_at_k"].items()}
                                 for w in ("heldin_template", "heldout_template")} for name in compared},
        "n_pass_samples": evaluation.n_pass_samples,
        "untrained_clusters_accuracy_sft": r4(untrained_accuracy("sft")),
        "untrained_clusters_accuracy_grpo": r4(untrained_accuracy("grpo")),
        "untrained_clusters_accuracy_change": r4(untrained_accuracy("grpo") - untrained_accuracy("sft")),
        **alignment,
        "alignment_rate_largest_change": r4(max(abs(judged["grpo"][k] - judged["sft"][k])
                                                for k in ("honest_rate", "refusal_rate_harmful", "over_refusal_rate"))),
        "kl": r4(kl),
        "zero_signal_share": r4(mean(rows, "zero_signal")),
        "zero_signal_share_first_tenth": r4(mean(first, "zero_signal")),
        "zero_signal_share_last_tenth": r4(mean(last, "zero_signal")),
        "response_length_first_tenth": r4(mean(first, "response_length")),
        "response_length_last_tenth": r4(mean(last, "response_length")),
        "eval_train_overlap": overlap(evaluation_prompts, splits.training_sets()),
        "n_eval_prompts": {w: len(splits.sft_eval[w]) for w in ("heldin_template", "heldout_template", "heldout_cluster")},
        "cache": str(tuned.path),
    }


def report_tools(preset: Preset, models: dict, measured: Measured) -> dict:
    """Tool use on held-out prompts: counting, and arithmetic beyond the world's range, answered
    by the tool model with its calls run, and by the SFT model as notebook 2 asks it (no tools);
    every held-in-template task with the runtime on, against SFT's accuracy (what the fine-tune
    cost the other clusters); the share of calls that failed."""
    tuned, sft_model, cfg = models["tools"], models["sft"], preset.tools
    sets = data_splits(preset).tools_eval
    with_tools = {name: evaluate_with_tools(tuned.model, tuned.tokenizer, examples, TOOLS, cfg.max_new_tokens,
                                            cfg.max_calls) for name, examples in sets.items()}
    without = {name: evaluate_tasks(sft_model.model, sft_model.tokenizer, examples, cfg.max_new_tokens)
               for name, examples in sets.items()}
    heldin = evaluate_with_tools(tuned.model, tuned.tokenizer, data_splits(preset).sft_eval["heldin_template"], TOOLS,
                                 cfg.max_new_tokens, cfg.max_calls)
    heldin_sft = heldin_accuracy(preset, models, measured, "sft")
    calls = [c for result in [*with_tools.values(), heldin] for t in result["transcripts"] for c in t.calls]
    r4 = lambda x: round(x, 4)  # noqa: E731
    return {
        "train_seconds": tuned.info["train_seconds"],
        "n_demonstrations": tuned.info["n_demonstrations"],
        "counting_accuracy": r4(with_tools["counting"]["accuracy"]),
        "counting_accuracy_without_tools": r4(without["counting"]["accuracy"]),
        "arithmetic_beyond_range_accuracy": r4(with_tools["arithmetic_beyond_range"]["accuracy"]),
        "arithmetic_beyond_range_accuracy_without_tools": r4(without["arithmetic_beyond_range"]["accuracy"]),
        "malformed_call_rate": r4(sum(c.error is not None for c in calls) / max(1, len(calls))),
        "n_calls": len(calls),
        "heldin_template_accuracy": r4(heldin["accuracy"]),
        "heldin_template_accuracy_change": r4(heldin["accuracy"] - heldin_sft),
        "n_eval_prompts": {name: len(examples) for name, examples in sets.items()},
        "cache": str(tuned.path),
    }


# ---------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One stage of the chain, as `embiggen run` and the CLI see it."""
    name: str
    train_or_load: Callable             # (preset, progress=, device=, **needs) -> its model (embiggen.chain)
    report: Callable                    # (preset, models by stage name, Measured) -> its figures
    config: Callable                    # preset -> its training configs by name, hashed into its cache key
    needs: dict[str, str] = field(default_factory=dict)  # argument of train_or_load -> the stage that provides it


#: Every stage, in the order they run: `embiggen.presets.STAGE_NAMES` (a test checks the two agree).
STAGES: dict[str, Stage] = {stage.name: stage for stage in [
    Stage("base", train_or_load_base, report_base, lambda preset: {"model": preset.model, "pretrain": preset.pretrain}),
    Stage("sft", train_or_load_sft, report_sft, lambda preset: {"sft": preset.sft}, needs={"base": "base"}),
    Stage("rm", train_or_load_reward, report_rm, lambda preset: {"reward": preset.reward}, needs={"sft": "sft"}),
    Stage("ppo", train_or_load_ppo, report_ppo, lambda preset: {"ppo": preset.ppo},
          needs={"sft": "sft", "reward": "rm"}),
    Stage("dpo", train_or_load_dpo, report_dpo, lambda preset: {"reward": preset.reward, "dpo": preset.dpo},
          needs={"sft": "sft"}),
    *(Stage(name, train_fn, report_relative(name), lambda preset, name=name: {"reward": preset.reward,
                                                                               name: getattr(preset, name)},
            needs={"sft": "sft"})
      for name, train_fn in (("simpo", train_or_load_simpo), ("orpo", train_or_load_orpo), ("kto", train_or_load_kto))),
    Stage("tools", train_or_load_tools, report_tools, lambda preset: {"tools": preset.tools}, needs={"sft": "sft"}),
    Stage("grpo", train_or_load_grpo, report_grpo, lambda preset: {"grpo": preset.grpo}, needs={"sft": "sft"}),
]}


def load_stage(preset: Preset, name: str, models: dict | None = None, progress: bool = True, device=None):
    """The model of stage `name`, trained or loaded, and before it every model it needs, each
    once: `models` (stage name -> model) collects them all and is handed on."""
    models = {} if models is None else models
    if name not in models:
        stage = STAGES[name]
        inputs = {arg: load_stage(preset, need, models, progress, device) for arg, need in stage.needs.items()}
        models[name] = stage.train_or_load(preset, progress=progress, device=device, **inputs)
    return models[name]


def parse_stages(stages: str | list[str] | None) -> list[str]:
    if stages is None:
        return list(STAGES)
    names = [s.strip() for s in (stages.split(",") if isinstance(stages, str) else stages) if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise UserError(f"unknown stage(s) {', '.join(unknown) or '(none given)'}; "
                         f"valid stages: {', '.join(STAGES)}")
    return [s for s in STAGES if s in names]  # always in pipeline order


def run(preset: Preset, stages=None, out: str | Path | None = None, progress: bool = True) -> dict:
    """Run `stages` (default all) on `preset` (from its pretrained causal LM `preset.base_model`, if
    it names one, else the embedded model); write report.json and report.md to `out`."""
    check_preset(preset)
    names = parse_stages(stages)
    out = Path(out) if out is not None else default_out(preset)
    if not check_writable(cache_root(), "EMBIGGEN_CACHE (the model cache)", read_only_ok=True):  # before training
        print(f"note: EMBIGGEN_CACHE={cache_root()} is read-only: every stage is loaded from it, and one that is not "
              "in it yet stops the run", file=sys.stderr)
    check_writable(out, "--out (the report's folder)")
    report_path = out / "report.json"
    report = read_report(report_path)
    if report.get("preset") not in (None, preset.name) or report.get("seed") not in (None, preset.seed):
        report = {}  # a report of another preset or seed is not ours to extend
    if report.get("base_model", "") != preset.base_model:
        report = {}  # nor a report of another base model
    report.update({"preset": preset.name, "seed": preset.seed, "base_model": preset.base_model})
    models: dict = {}  # stage name -> its model, each loaded once and handed on
    measured = Measured()  # each model's evaluations, each measured once and handed on
    for name in names:
        started = time.perf_counter()
        load_stage(preset, name, models, progress)
        with generation_progress(f"{name}: measuring on held-out prompts" if progress else None):
            figures = STAGES[name].report(preset, models, measured)
        report[name] = {**figures, "stage_seconds": round(time.perf_counter() - started, 2)}
        # write after every stage, so an interrupted run keeps what it finished
        atomic_write_text(report_path, strict_json(report, name))
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def check_writable(folder: Path, what: str, read_only_ok: bool = False) -> bool:
    """True if files can be created in `folder` (made if missing); else a `UserError` naming
    `what` — or, with `read_only_ok`, False where the folder exists but is read-only (a cache
    mounted read-only can still be read)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        if read_only_ok and read_only(exc) and folder.is_dir():
            return False
        if is_disk_full(exc):
            raise DiskFull(folder) from exc
        raise UserError(f"{what}: cannot write in {folder} ({exc.strerror or type(exc).__name__})") from exc
    return True


def read_report(path: Path) -> dict:
    """The report to extend: `path`'s, or a new one if there is none or it is not a report (it
    is then moved aside, and the run says so)."""
    if not path.exists():
        return {}
    try:  # strict JSON only: NaN, Infinity and numbers too large for a float (1e999) are not a report's
        report = json.loads(path.read_text(), parse_constant=_not_json, parse_float=_finite_float)
        if isinstance(report, dict):
            return report
    except (OSError, ValueError):
        pass
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    print(f"warning: {path} is not a report Embiggen wrote; moved it to {aside} and starting a new one",
          file=sys.stderr)
    return {}


def _not_json(name: str):
    raise ValueError(f"{name} is not strict JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a float")
    return value


def strict_json(report: dict, stage: str) -> str:
    """The report as strict JSON. A rate of nothing (a `*rate*` figure over no prompts of its
    kind, NaN by design in `embiggen.judging.evaluate`) is written as null; any other figure that is not
    a finite number is an error naming the stage and the key, never a bare NaN in the file."""
    bad = [key for key, value in flatten({stage: report.get(stage, {})})
           if isinstance(value, float) and not math.isfinite(value) and "rate" not in key.rsplit(".", 1)[-1]]
    if bad:
        raise UserError(f"stage {stage} measured a figure that is not a number ({', '.join(bad)}); "
                        "its cached model may be damaged: delete it from EMBIGGEN_CACHE, or run with --debug")
    return json.dumps(_nulls(report), indent=2, allow_nan=False)


def _nulls(value):
    """NaN (a rate of nothing) as None, everywhere in a nested report."""
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def default_out(preset: Preset) -> Path:
    """runs/<preset>, or runs/<preset>-<model folder> for a chain that starts from a pretrained model."""
    base = Path(preset.base_model.rstrip("/")).name if preset.base_model else ""
    return Path("runs") / (f"{preset.name}-{base}" if base else preset.name)
