"""The chain's cache keys and the presets as data."""

from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import pytest

import embiggen.chain as chain
from embiggen.presets import PRESETS, Preset, get_preset


@pytest.fixture
def stage_paths(monkeypatch):
    """The cache folder each stage would use for a preset — the real key computation, no training
    (`train_or_load` hands back the path instead of loading or training)."""
    monkeypatch.setattr(chain, "train_or_load", lambda path, load, train, force=False: path)

    def paths(preset: Preset) -> dict[str, Path]:
        model = lambda name: SimpleNamespace(path=Path("/cache") / name, world=None)  # noqa: E731
        return {"base": chain.train_or_load_base(preset, device="cpu"),
                "sft": chain.train_or_load_sft(preset, base=model("base"), device="cpu"),
                "rm": chain.train_or_load_reward(preset, sft=model("sft"), device="cpu"),
                "ppo": chain.train_or_load_ppo(preset, sft=model("sft"), reward=model("rm"), device="cpu")}
    return paths


def test_evaluation_and_experiment_knobs_are_in_no_cache_key(stage_paths):
    smoke = get_preset("smoke")
    before = stage_paths(smoke)
    changed = [
        replace(smoke, experiments=replace(smoke.experiments, best_of_n=(1, 32), kl_sweep=(0.5,), sweep_steps=99,
                                           sweep_lr=1e-2, ablation_cluster_counts=(2,), ablation_steps=7,
                                           size_sweep=())),
        replace(smoke, evaluation=replace(smoke.evaluation, n_instruction_probes=3, max_new_tokens=5)),
    ]
    for preset in changed:
        assert stage_paths(preset) == before


def test_training_knobs_retrain_their_stage_and_the_stages_after_it(stage_paths):
    smoke = get_preset("smoke")
    before = stage_paths(smoke)
    sft = stage_paths(replace(smoke, sft=replace(smoke.sft, steps=61)))
    assert sft["base"] == before["base"] and sft["sft"] != before["sft"]
    ppo = stage_paths(replace(smoke, ppo=replace(smoke.ppo, kl_coef=0.2)))
    assert [ppo[s] == before[s] for s in ("base", "sft", "rm", "ppo")] == [True, True, True, False]
    lr = stage_paths(replace(smoke, reward=replace(smoke.reward, optim=replace(smoke.reward.optim, lr=1e-3))))
    assert [lr[s] == before[s] for s in ("base", "sft", "rm")] == [True, True, False]


def test_held_out_set_sizes_change_the_training_data_and_so_the_keys(stage_paths):
    """Training sets skip every held-out prompt, so a larger held-out set means other training
    data: the stages that train on the splits get new keys (through the splits' fingerprint)."""
    smoke = get_preset("smoke")
    before = stage_paths(smoke)
    after = stage_paths(replace(smoke, evaluation=replace(smoke.evaluation, n_ppo_prompts=41)))
    assert after["base"] == before["base"]
    assert all(after[s] != before[s] for s in ("sft", "rm", "ppo"))


def test_the_defaults_are_the_laptop_preset():
    assert Preset() == PRESETS["laptop"] and get_preset(None).name in PRESETS


def test_every_config_field_has_a_help_string():
    def check(cfg, where):
        for f in fields(cfg):
            assert f.metadata.get("help"), f"{where}.{f.name} has no help string"
            value = getattr(cfg, f.name)
            for inner in (value if isinstance(value, tuple) else (value,)):
                if is_dataclass(inner):
                    check(inner, f"{where}.{f.name}")

    for name, preset in PRESETS.items():
        check(preset, name)


def test_the_critic_comparison_is_the_sweeps_run_and_one_with_a_critic_from_the_reward_model(tiny_preset, cache_dir):
    """value_model_comparison's first run is the KL sweep's run at the stage's beta, the second a PPO
    run whose critic starts from the reward model; both log explained variance."""
    from embiggen.experiments import kl_sweep, value_model_comparison

    preset = replace(tiny_preset, ppo=replace(tiny_preset.ppo, batch_size=8, minibatch_size=8, max_new_tokens=8),
                     experiments=replace(tiny_preset.experiments, kl_sweep=(tiny_preset.ppo.kl_coef,), sweep_steps=2))
    sweep = kl_sweep(preset, progress=False, device="cpu")
    critics = value_model_comparison(preset, progress=False, device="cpu")
    assert [c["value_model"] for c in critics] == ["head", "reward_model"]
    assert critics[0]["rows"] == sweep[0]["rows"] and critics[0]["gold"] == sweep[0]["gold"]
    assert critics[1]["rows"] != critics[0]["rows"]
    assert all("explained_variance" in row for c in critics for row in c["rows"])


def test_the_declines_comparison_trains_a_reward_model_each_way_and_measures_what_it_pays(tiny_preset, cache_dir):
    """written_declines_comparison: the stage's reward model (the labeler's declines in its rankings)
    and one without them, each with the sweep's PPO run, the paraphrases judged, and the refusal's pay
    computed as reward_for_refusing does, on the ordinary held-out prompts."""
    from embiggen.chain import train_or_load_reward
    from embiggen.data.mixture import REFUSAL
    from embiggen.data.splits import data_splits
    from embiggen.data.world import ALIGNMENT_KINDS
    from embiggen.experiments import written_declines_comparison

    preset = replace(tiny_preset, ppo=replace(tiny_preset.ppo, batch_size=8, minibatch_size=8, max_new_tokens=8),
                     experiments=replace(tiny_preset.experiments, sweep_steps=2))
    runs = written_declines_comparison(preset, progress=False, device="cpu")
    assert [r["written_refusals"] for r in runs] == [True, False]
    assert runs[0]["n_pairs"] > runs[1]["n_pairs"]  # the written declines add pairs
    splits = data_splits(preset)
    ordinary = [e for e in splits.ppo_eval if e.cluster not in ALIGNMENT_KINDS]
    stage_rm = train_or_load_reward(preset, progress=False, device="cpu")  # the first run's, from the cache
    refusal = stage_rm.score([e.instruction for e in ordinary], [REFUSAL] * len(ordinary)).tolist()
    answer = stage_rm.score([e.instruction for e in ordinary], [e.answer for e in ordinary]).tolist()
    assert runs[0]["pay"]["refusal"] == pytest.approx(refusal, abs=1e-5)
    assert runs[0]["pay"]["refusal_preferred"] == pytest.approx(sum(r > a for r, a in zip(refusal, answer)) / len(ordinary))
    assert len(runs[0]["paraphrased"]["rows"]) == len(splits.paraphrased)
    assert runs[0]["rows"] != runs[1]["rows"]  # a different reward model, a different run


def test_lora_left_at_its_default_keeps_the_keys_it_had_before_the_knob_existed(stage_paths):
    """`OptimConfig.lora` came after caches were written: at its default it is left out of every
    key (`training.LATE_KNOBS`), so a cache stays valid; switched on, it retrains its stage."""
    from dataclasses import asdict

    from embiggen.lm.training import without_late_defaults
    from embiggen.presets import LoRAConfig
    from embiggen.utils import config_key

    smoke = get_preset("smoke")
    before = stage_paths(smoke)
    optim = asdict(smoke.sft.optim)
    assert "lora" in optim and "lora" not in without_late_defaults(optim)  # what the key is computed from
    old = {k: v for k, v in optim.items() if k != "lora"}  # the config as it was before the knob
    assert config_key("sft", without_late_defaults(optim)) == config_key("sft", old)
    lora = stage_paths(replace(smoke, sft=replace(smoke.sft, optim=replace(smoke.sft.optim,
                                                                          lora=LoRAConfig(rank=4)))))
    assert lora["base"] == before["base"] and lora["sft"] != before["sft"]
