"""The whole chain, stage by stage, and the report card that `embiggen run` prints.

Each stage trains (or loads from the cache) its model, evaluates it on held-out data with
the same functions the notebooks call, and adds its figures to the report under its own
key. Later steps of the course register their stages here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .evaluate import (evaluate_alignment, evaluate_tasks, fact_cloze, instruction_answer_rate, judge_model,
                       win_rate)
from .mixture import evaluation_sets
from .model import count_params
from .presets import Preset, get_preset
from .ppo import train_or_load_ppo
from .pretrain import train_or_load_base
from .reward import train_or_load_reward
from .sft import preset_spec, train_or_load_sft
from .utils import atomic_write_text


def run_base(preset: Preset, report: dict, progress: bool = True) -> None:
    base = train_or_load_base(preset, progress=progress)
    cloze = fact_cloze(base.model, base.tokenizer, base.world.people)
    answers = instruction_answer_rate(base.model, base.tokenizer, base.world, n=preset.n_instruction_probes)
    report["base"] = {
        "params": count_params(base.model),
        "train_tokens": base.info["train_tokens"],
        "train_seconds": base.info["train_seconds"],
        "tokens_per_second": base.info["tokens_per_second"],
        "val_loss": round(base.info["val_loss"], 4),
        "fact_cloze_accuracy": round(cloze["accuracy"], 4),
        "fact_cloze_per_attribute": {k: round(v, 4) for k, v in cloze["per_attribute"].items()},
        "instruction_answer_rate": round(answers["rate"], 4),
        "instruction_answer_rate_per_cluster": {k: round(v, 4) for k, v in answers["per_cluster"].items()},
        "device": base.info["device"],
        "cache": str(base.path),
    }


def evaluate_instruction_following(model, tokenizer, sets: dict) -> dict:
    """Accuracy on every evaluation split of `embiggen.mixture.evaluation_sets`."""
    return {split: evaluate_tasks(model, tokenizer, examples)
            for split, examples in sets.items() if split != "alignment"}


def run_sft(preset: Preset, report: dict, progress: bool = True) -> None:
    tuned = train_or_load_sft(preset, progress=progress)
    base = train_or_load_base(preset, progress=progress)
    sets = evaluation_sets(tuned.world, preset.sft.n_eval_per_cluster, seed=preset.seed + 99, spec=preset_spec(preset))
    after = evaluate_instruction_following(tuned.model, tuned.tokenizer, sets)
    before = evaluate_instruction_following(base.model, base.tokenizer, sets)
    hedges = evaluate_alignment(tuned.model, tuned.tokenizer, sets["alignment"])["hedge_rate"]
    per_cluster = {**after["heldin_template"]["per_cluster"], **after["heldout_cluster"]["per_cluster"]}
    report["sft"] = {
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
        "cache": str(tuned.path),
    }


def run_rm(preset: Preset, report: dict, progress: bool = True) -> None:
    rm = train_or_load_reward(preset, progress=progress)
    info = rm.info
    report["rm"] = {
        "train_seconds": info["train_seconds"],  # training; preference collection is collect_seconds
        "collect_seconds": info["collect_seconds"],
        "n_pairs": info["n_pairs"],
        "n_eval_pairs": info["n_eval_pairs"],
        "pairwise_accuracy": round(info["pairwise_accuracy"], 4),
        "margin": round(info["margin"], 4),
        "per_type_accuracy": {k: round(v, 4) for k, v in info["per_type_accuracy"].items()},
        "per_type_count": info["per_type_count"],
        "label_noise": preset.reward.label_noise,
        "cache": str(rm.path),
    }


def run_ppo(preset: Preset, report: dict, progress: bool = True) -> None:
    from .labeler import Labeler
    from .ppo import final_reward_model, policy_kl
    from .preferences import heldout_prompts
    from .reward import load_pairs, pairwise_accuracy

    tuned = train_or_load_ppo(preset, progress=progress)
    sft_model = train_or_load_sft(preset, progress=progress)
    first_rm = train_or_load_reward(preset, progress=progress)
    rm = final_reward_model(tuned, first_rm)  # the one PPO optimised in its last round
    policy_pairs = load_pairs(rm, "eval") if rm is not first_rm else []
    labeler, prompts, cfg = Labeler(), heldout_prompts(preset, sft_model.world), preset.ppo
    after = judge_model(tuned.model, tuned.tokenizer, prompts, labeler, rm, cfg.max_new_tokens)
    before = judge_model(sft_model.model, sft_model.tokenizer, prompts, labeler, rm, cfg.max_new_tokens)
    wins = win_rate(labeler, prompts, after["rows"], before["rows"])
    kl = policy_kl(tuned.model, sft_model.model, tuned.tokenizer, [e.instruction for e in prompts],
                   cfg.max_new_tokens, cfg.temperature, seed=preset.seed)
    sets = evaluation_sets(sft_model.world, preset.sft.n_eval_per_cluster, seed=preset.seed + 99,
                           spec=preset_spec(preset))
    accuracy_ppo = evaluate_tasks(tuned.model, tuned.tokenizer, sets["heldin_template"])["accuracy"]
    accuracy_sft = evaluate_tasks(sft_model.model, sft_model.tokenizer, sets["heldin_template"])["accuracy"]
    r4 = lambda x: round(x, 4)  # noqa: E731
    before["heldin_template_accuracy"], after["heldin_template_accuracy"] = accuracy_sft, accuracy_ppo
    side_by_side = {}  # gold_score_sft, gold_score_ppo, rm_score_sft, ...
    for key in ("gold_score", "rm_score", "honest_rate", "refusal_rate_harmful", "over_refusal_rate",
                "heldin_template_accuracy"):
        side_by_side[f"{key}_sft"], side_by_side[f"{key}_ppo"] = r4(before[key]), r4(after[key])
    report["ppo"] = {
        "train_seconds": tuned.info["train_seconds"],
        "episodes": tuned.info["episodes"],
        "kl_coef": tuned.info["kl_coef"],
        **side_by_side,
        "win_rate_vs_sft": r4(wins["win_rate"]),
        "win_tie_rate_vs_sft": r4(wins["win_tie_rate"]),
        "wins_ties_losses": [wins["wins"], wins["ties"], wins["losses"]],
        "kl": r4(kl),
        "n_eval_prompts": len(prompts),
        "reward_model_rounds": tuned.info.get("rounds", 1),
        # on held-out pairs of the policy's own samples: the first reward model was never trained on such answers
        "rm_first_accuracy_on_policy_samples": r4(pairwise_accuracy(first_rm.model, first_rm.tokenizer,
                                                                    policy_pairs)["accuracy"]) if policy_pairs else None,
        "rm_final_accuracy_on_policy_samples": r4(rm.info["policy_pairwise_accuracy"]) if policy_pairs else None,
        "cache": str(tuned.path),
    }


#: stage name -> function(preset, report, progress). Order is the order they run in.
STAGES = {"base": run_base, "sft": run_sft, "rm": run_rm, "ppo": run_ppo}

#: What each headline figure should reach on the laptop preset (see the issues).
TARGETS = {
    "base.train_seconds": ("<=", 300),
    "base.fact_cloze_accuracy": (">=", 0.95),
    "base.instruction_answer_rate": ("<=", 0.05),
    "sft.train_seconds": ("<=", 180),
    "sft.heldin_template_accuracy": (">=", 0.90),
    "sft.heldout_template_accuracy": (">=", 0.75),
    "sft.heldout_cluster_accuracy": (">=", 0.30),
    "sft.pretraining_only_fact_accuracy": (">=", 0.80),
    "rm.pairwise_accuracy": (">=", 0.85),
    "ppo.win_rate_vs_sft": (">=", 0.75),
    "ppo.honest_rate_ppo": (">=", 0.80),
    "ppo.refusal_rate_harmful_ppo": (">=", 0.90),
    "ppo.over_refusal_rate_ppo": ("<=", 0.05),
}


def parse_stages(stages: str | list[str] | None) -> list[str]:
    if stages is None:
        return list(STAGES)
    names = [s.strip() for s in (stages.split(",") if isinstance(stages, str) else stages) if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ValueError(f"unknown stage(s) {', '.join(unknown) or '(none given)'}; "
                         f"valid stages: {', '.join(STAGES)}")
    return [s for s in STAGES if s in names]  # always in pipeline order


def run(preset: str | Preset | None = None, stages=None, out: str | Path | None = None,
        progress: bool = True) -> dict:
    """Run `stages` (default all) on `preset`; write report.json and report.md to `out`."""
    preset = get_preset(preset)
    names = parse_stages(stages)
    out = Path(out) if out is not None else Path("runs") / preset.name
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if report.get("preset") not in (None, preset.name) or report.get("seed") not in (None, preset.seed):
        report = {}  # a report of another preset or seed is not ours to extend
    report.update({"preset": preset.name, "seed": preset.seed})
    for name in names:
        started = time.perf_counter()
        STAGES[name](preset, report, progress)
        report[name]["stage_seconds"] = round(time.perf_counter() - started, 2)
        # write after every stage, so an interrupted run keeps what it finished
        atomic_write_text(report_path, json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def _flatten(report: dict) -> list[tuple[str, object]]:
    """Every number in the report, nested dicts included, as ("stage.key[.subkey]", value)."""
    rows = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((prefix, value))

    for stage, figures in report.items():
        if isinstance(figures, dict):
            walk(stage, figures)
    return rows


def _fmt(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


#: every held-in task cluster, one by one (the held-out cluster has its own target above)
HELDIN_CLUSTER_TARGET = (">=", 0.80)


def _target(key: str, report: dict):
    if key in TARGETS:
        return TARGETS[key]
    prefix = "sft.per_cluster."
    if key.startswith(prefix) and key[len(prefix):] != report.get("sft", {}).get("heldout_cluster"):
        return HELDIN_CLUSTER_TARGET
    return None


def _verdict(key: str, value, report: dict) -> str:
    """'>= 0.95 ok' against the laptop target; other presets show the target only."""
    target = _target(key, report)
    if target is None:
        return ""
    op, bound = target
    if report.get("preset") != "laptop":
        return f"({op} {bound} on laptop)"
    ok = value <= bound if op == "<=" else value >= bound
    return f"{op} {bound} {'ok' if ok else 'MISSED'}"


def report_markdown(report: dict) -> str:
    lines = [f"# Embiggen report card — preset `{report.get('preset')}`, seed {report.get('seed')}", "",
             "| figure | value | laptop target |", "|---|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} | {_verdict(k, v, report)} |" for k, v in _flatten(report)]
    return "\n".join(lines) + "\n"


def report_card(report: dict) -> str:
    rows = [(k, _fmt(v), _verdict(k, v, report)) for k, v in _flatten(report)]
    width = max(len(r[0]) for r in rows) if rows else 10
    head = f"Embiggen report card — preset {report.get('preset')}, seed {report.get('seed')}"
    body = "\n".join(f"  {k:<{width}}  {v:>12}  {t}".rstrip() for k, v, t in rows)
    return f"{head}\n{'-' * len(head)}\n{body}"
