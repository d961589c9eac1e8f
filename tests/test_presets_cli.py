import json
from dataclasses import replace

import pytest

from embiggen.cli import main
from embiggen.pipeline import parse_stages, run
from embiggen.report import report_card
from embiggen.presets import PRESETS, get_preset


def test_presets_by_name_and_env(monkeypatch):
    assert set(PRESETS) == {"smoke", "laptop", "gpu", "pretrained", "pretrained-smoke", "pretrained-lora"}
    monkeypatch.delenv("EMBIGGEN_PRESET", raising=False)
    monkeypatch.delenv("EMBIGGEN_BASE", raising=False)
    assert get_preset().name == "laptop" and get_preset().base_model == ""
    monkeypatch.setenv("EMBIGGEN_PRESET", "smoke")
    assert get_preset().name == "smoke" and get_preset("gpu").name == "gpu"
    # the pretrained presets start from a pretrained model; --base / $EMBIGGEN_BASE choose another
    assert get_preset("pretrained").base_model == PRESETS["pretrained-smoke"].base_model != ""
    assert get_preset("smoke", base="/models/mine").base_model == "/models/mine"
    monkeypatch.setenv("EMBIGGEN_BASE", "/models/other")
    assert get_preset().base_model == "/models/other" and get_preset("pretrained").base_model == "/models/other"
    assert PRESETS["smoke"].base_model == ""  # the presets themselves are not changed
    assert get_preset("pretrained", base="").base_model == ""  # "": the embedded model, whatever the environment


def test_the_lora_preset_is_the_pretrained_recipe_with_adapters_on_every_fine_tuning_stage():
    from embiggen.presets import LoRAConfig

    full, lora = PRESETS["pretrained"], PRESETS["pretrained-lora"]
    stages = {"sft": lambda p: p.sft.optim, "reward": lambda p: p.reward.optim, "ppo": lambda p: p.ppo.optim,
              "dpo": lambda p: p.dpo.optim, "grpo": lambda p: p.grpo.optim, "tools": lambda p: p.tools.train.optim}
    for name, optim in stages.items():
        assert optim(lora).lora == LoRAConfig(rank=16, alpha=32.0), name
        assert optim(lora).lr == pytest.approx(10 * optim(full).lr), name
        assert optim(full).lora.rank == 0, name
    assert lora.base_model == full.base_model and lora.pretrain == full.pretrain


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid presets: smoke, laptop, gpu, pretrained, pretrained-smoke, pretrained-lora"):
        get_preset("huge")


def test_unknown_stage_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid stages: base, sft, rm, ppo, dpo, simpo, orpo, kto, tools, grpo"):
        parse_stages("base,rlhf")
    with pytest.raises(ValueError, match="valid stages"):
        parse_stages(",")
    assert parse_stages("sft,base") == ["base", "sft"]
    assert parse_stages(None) == parse_stages("grpo,tools,kto,orpo,simpo,dpo,ppo,rm,sft,base") == [
        "base", "sft", "rm", "ppo", "dpo", "simpo", "orpo", "kto", "tools", "grpo"]


def test_cli_reports_bad_input_without_traceback(capsys):
    assert main(["run", "--preset", "huge"]) == 2
    assert "valid presets" in capsys.readouterr().err
    assert main(["run", "--stages", "magic"]) == 2
    assert "valid stages" in capsys.readouterr().err
    assert main(["sample", "--model", "no-such-org/no-such-model", "hello"]) == 2
    assert "embedded default" in capsys.readouterr().err
    assert main(["sample", "  "]) == 2


def test_run_writes_report_with_base_keys(tiny_preset, tiny_base, tmp_path):
    report = run(tiny_preset, "base", tmp_path, progress=False)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == report
    base = report["base"]
    for key in ["params", "train_tokens", "train_seconds", "tokens_per_second", "val_loss",
                "fact_cloze_accuracy", "instruction_answer_rate"]:
        assert key in base
    assert report["preset"] == "smoke" and report["seed"] == tiny_preset.seed
    assert base["params"] == tiny_base.params and 0 <= base["fact_cloze_accuracy"] <= 1
    assert "base.fact_cloze_accuracy" in (tmp_path / "report.md").read_text()
    assert "base.val_loss" in report_card(report)


def test_chat_loop_answers_and_quits(tiny_base, monkeypatch, capsys):
    import embiggen.commands as commands

    monkeypatch.setattr(commands, "load_model_by_name", lambda name, preset, train=False: (tiny_base.model, tiny_base.tokenizer))
    lines = iter(["Where does Alma live?", "   ", "quit"])

    class Args:
        model, preset, train = "sft", "smoke", False

    assert commands._cmd_chat(Args, read=lambda prompt: next(lines)) == 0
    out = capsys.readouterr().out
    assert out.count("sft> ") == 1 and "Ctrl-D" in out


def test_chat_model_names_map_to_the_embedded_stages(monkeypatch, tiny_base):
    """`--model ppo` goes through the stage registry: every model PPO needs is loaded once and handed in."""
    import embiggen.commands as commands
    from embiggen.pipeline import STAGES

    seen = []
    for name, stage in STAGES.items():
        def fake(preset, progress=True, device=None, _name=name, **needs):
            seen.append((_name, preset.name, {arg: model.name for arg, model in needs.items()}))
            return type("Trained", (), {"name": _name, "model": f"{_name} model", "tokenizer": "tokenizer"})
        monkeypatch.setattr(stage, "train_or_load", fake)
    assert commands.load_model_by_name("ppo", get_preset("smoke"), train=True) == ("ppo model", "tokenizer")
    assert seen == [("base", "smoke", {}), ("sft", "smoke", {"base": "base"}), ("rm", "smoke", {"sft": "sft"}),
                    ("ppo", "smoke", {"sft": "sft", "reward": "rm"})]
    assert commands.LANGUAGE_MODELS == ("base", "sft", "ppo", "dpo", "simpo", "orpo", "kto", "tools", "grpo")


def test_report_card_judges_every_heldin_cluster_but_not_the_heldout_one():
    report = {"preset": "laptop", "seed": 1,
              "sft": {"heldout_cluster": "fact_check", "heldout_cluster_accuracy": 0.28,
                      "per_cluster": {"fact_qa": 1.0, "counting": 0.47, "fact_check": 0.28}},
              "rm": {"per_type_accuracy": {"correct vs wrong": 0.42}}}
    card = report_card(report)
    lines = {line.split()[0]: line for line in card.splitlines() if line.startswith("  sft.") or line.startswith("  rm.")}
    assert lines["sft.per_cluster.fact_qa"].endswith("100.0%  ✓ target >= 80.0%")
    assert lines["sft.per_cluster.counting"].endswith("47.0%  ✗ target >= 80.0%")
    assert lines["sft.per_cluster.fact_check"].endswith("28.0%")  # the held-out cluster: no per-cluster target
    assert lines["sft.heldout_cluster_accuracy"].endswith("✗ target >= 30.0%")
    assert "rm.per_type_accuracy.correct vs wrong" in card
    smoke = report_card({**report, "preset": "smoke"})
    assert "checks that the chain runs, not how well" in smoke and "target" not in smoke.split("Every figure:")[1]


def test_the_report_card_leads_with_what_each_stage_learned_in_words():
    from embiggen.report import fmt, headline_lines

    report = {"preset": "laptop", "seed": 1,
              "base": {"fact_cloze_accuracy": 1.0, "instruction_answer_rate": 0.0, "name_copy_rate": 0.0,
                       "train_seconds": 297.4, "tokens_per_second": 11200.5},
              "ppo": {"wins_ties_losses": [6, 34, 0], "win_rate_vs_sft": 1.0, "honest_rate_sft": 0.32,
                      "honest_rate_ppo": 0.52, "refusal_rate_harmful_sft": 0.12, "refusal_rate_harmful_ppo": 1.0,
                      "over_refusal_rate_ppo": 0.0}}
    lines = headline_lines(report)
    assert any("facts recalled by greedy autocomplete" in l and "100%" in l and l.endswith("✓") for l in lines)
    assert any("6 wins, 34 ties, 0 losses" in l for l in lines)  # not a bare "win rate 1"
    assert any("honest answers, SFT → PPO" in l and "32% → 52%" in l and l.endswith("✗") for l in lines)
    assert lines[-1] == "  training, every stage together: 297 s"
    assert fmt("base.tokens_per_second", 19440.2) == "19,440" and fmt("ppo.kl", 0.1833) == "0.1833"
    assert fmt("grpo.untrained_clusters_accuracy_change", -0.0186) == "-1.9 points"
    assert fmt("rm.per_type_count.correct vs wrong", 1) == "1" and fmt("sft.per_cluster.counting", 0.47) == "47.0%"
    assert "What each stage learned" in report_card(report)


def test_config_command_prints_every_knob_with_its_help(capsys):
    from dataclasses import fields

    from embiggen.presets import PPOConfig

    assert main(["config", "--preset", "smoke", "--stage", "ppo"]) == 0
    out = capsys.readouterr().out
    smoke = get_preset("smoke").ppo
    assert f"kl_coef = {smoke.kl_coef!r}  # beta in" in out and f"lr = {smoke.optim.lr!r}" in out
    assert all(f"\n  {f.name} = " in out or f"\n  {f.name}:" in out for f in fields(PPOConfig))
    assert main(["config", "--stage", "nope"]) == 2


def test_dpo_report_reuses_what_the_run_measured_and_gets_the_same_figures(tiny_preset, tiny_base, monkeypatch):
    """`embiggen run` hands each report what earlier reports measured (`Measured`): DPO's report
    judges only DPO's answers when PPO's report already judged SFT's and PPO's, and its figures
    are the same as when it measures everything itself."""
    import dataclasses

    import embiggen.pipeline as pipeline
    from embiggen.judging.evaluate import evaluate_tasks
    from embiggen.judging.labeler import Labeler
    from embiggen.data.splits import data_splits

    stand_in = dataclasses.replace(tiny_base, info={"train_seconds": 1.0, "beta": 0.5, "n_pairs": 2})
    models = {"sft": stand_in, "ppo": stand_in, "dpo": stand_in}
    judge, calls = pipeline.judge_model, []
    monkeypatch.setattr(pipeline, "judge_model", lambda *args: calls.append(args) or judge(*args))
    fresh = pipeline.report_dpo(tiny_preset, models, pipeline.Measured())
    assert len(calls) == 4  # DPO, SFT and PPO answers, each judged, and DPO's answers to the paraphrases

    splits = data_splits(tiny_preset)
    measured = pipeline.Measured()  # what report_sft and report_ppo leave behind
    for name in ("sft", "ppo"):
        measured[name, "judged_ppo_eval"] = judge(tiny_base.model, tiny_base.tokenizer, splits.ppo_eval, Labeler(),
                                                  None, tiny_preset.evaluation.max_new_tokens)
    measured["sft", "heldin_template_accuracy"] = evaluate_tasks(
        tiny_base.model, tiny_base.tokenizer, splits.sft_eval["heldin_template"])["accuracy"]
    calls.clear()
    reused = pipeline.report_dpo(tiny_preset, models, measured)
    assert len(calls) == 2 and ("dpo", "judged_ppo_eval") in measured and ("dpo", "judged_paraphrased") in measured
    assert reused == fresh


def test_run_with_experiments_trains_every_notebook_experiment_ahead(monkeypatch, capsys):
    import embiggen.commands as commands
    import embiggen.experiments as experiments

    called = []
    monkeypatch.setattr(experiments, "NOTEBOOK_EXPERIMENTS",
                        {name: (lambda preset, progress, device, name=name: called.append((name, preset.name)))
                         for name in experiments.NOTEBOOK_EXPERIMENTS})
    assert set(experiments.NOTEBOOK_EXPERIMENTS) == {"size_sweep", "copying_sweep", "cluster_ablation", "kl_sweep",
                                                     "ensemble_comparison",
                                                     "value_model_comparison", "written_declines_comparison",
                                                     "dpo_beta_sweep", "relatives_sweep", "grpo_variants",
                                                     "loose_verifier_run",
                                                     "verifiable_baselines"}
    monkeypatch.setattr(commands, "run", lambda *a, **k: {"preset": "smoke", "seed": 1})
    monkeypatch.setattr(commands, "report_card", lambda report: "card")
    assert main(["run", "--preset", "smoke", "--out", "/tmp/x"]) == 0
    assert called == []  # opt-in only
    assert main(["run", "--preset", "smoke", "--out", "/tmp/x", "--experiments", "--quiet"]) == 0
    assert called == [(name, "smoke") for name in experiments.NOTEBOOK_EXPERIMENTS]
    assert "experiments are in the cache" in capsys.readouterr().out


def test_a_bare_embiggen_prints_the_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: embiggen" in out and "convert-gguf" in out and "chat" in out


def test_sample_and_chat_use_the_cached_preset_and_say_which(tmp_path, monkeypatch, capsys):
    """With no --preset and no $EMBIGGEN_PRESET, the one preset whose model is cached; never a silent default."""
    import embiggen.commands as commands
    from embiggen.errors import UserError

    monkeypatch.setenv("EMBIGGEN_CACHE", str(tmp_path))
    monkeypatch.delenv("EMBIGGEN_PRESET", raising=False)

    def cache(stage, preset):
        entry = tmp_path / stage / f"{preset}-seed1234-abc"
        entry.mkdir(parents=True)
        (entry / "model.safetensors").write_text("x")

    assert commands.choose_preset(None, "ppo")[0].name == "laptop"  # nothing cached: the default
    cache("ppo", "smoke")
    (tmp_path / "ppo" / ".laptop-seed1-tmp-99").mkdir()  # a half-written entry does not count
    preset, why = commands.choose_preset(None, "ppo")
    assert preset.name == "smoke" and "only preset" in why
    assert commands.choose_preset("gpu", "ppo")[0].name == "gpu"
    monkeypatch.setenv("EMBIGGEN_PRESET", "laptop")
    assert commands.choose_preset(None, "ppo") == (get_preset("laptop"), "$EMBIGGEN_PRESET")
    monkeypatch.delenv("EMBIGGEN_PRESET")
    cache("ppo", "pretrained-smoke")
    with pytest.raises(UserError, match="several presets.*pretrained-smoke, smoke.*--preset"):
        commands.choose_preset(None, "ppo")
    cache("ppo", "laptop")
    assert commands.choose_preset(None, "ppo")[0].name == "laptop"

    class Args:
        model, preset = "ppo", None
    monkeypatch.setattr(commands, "choose_preset", lambda name, stage: (get_preset("smoke"), "the only one"))
    assert commands.announce_preset(Args).name == "smoke"
    assert "using the ppo model of preset 'smoke' (the only one; --preset chooses another)" in capsys.readouterr().err


def test_a_model_that_is_not_cached_is_trained_only_when_asked(tiny_preset, cache_dir):
    """`sample` / `chat` load what is cached; anything missing is one line that says how to train it."""
    import embiggen.commands as commands
    from embiggen.errors import UserError

    untrained = replace(tiny_preset, seed=98765)  # nothing of it is in the test cache
    with pytest.raises(UserError, match=r"the base model of preset 'smoke' is not in the cache yet .*--train"):
        commands.load_model_by_name("base", untrained)
    assert not any((cache_dir / "base").glob("smoke-seed98765-*"))  # and nothing was trained


def test_measuring_a_stage_shows_progress(tiny_base, monkeypatch):
    """`embiggen run` measuring a stage (minutes for a pretrained base) shows a bar for its generations."""
    from embiggen.lm import generate as gen

    seen = []
    monkeypatch.setattr(gen, "tqdm", lambda batches, desc=None, disable=False, leave=True: seen.append(
        (desc, disable)) or batches)
    gen.generate(tiny_base.model, tiny_base.tokenizer, ["Alma"], max_new_tokens=2)
    with gen.generation_progress("base: measuring on held-out prompts"):
        gen.generate(tiny_base.model, tiny_base.tokenizer, ["Alma"], max_new_tokens=2)
    gen.generate(tiny_base.model, tiny_base.tokenizer, ["Alma"], max_new_tokens=2)
    assert seen == [(None, True), ("base: measuring on held-out prompts", False), (None, True)]
