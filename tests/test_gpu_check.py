"""benchmarks/gpu_check.py, the script a lent GPU runs, run here on the CPU (`--allow-cpu`) on a
tiny model stored in bf16: every stage of a pretrained preset, its timings and peaks, its report."""

import importlib.util
import sys
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_script():
    if str(SCRIPT.parent) not in sys.path:  # as when run as a script: benchmarks/common.py beside it
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_runs_every_stage_and_writes_its_figures(tmp_path, cache_dir, capsys, save_tiny_model):
    from embiggen.lm.model import load_pretrained

    model, _ = load_pretrained(save_tiny_model(tmp_path / "fp32"))
    save_tiny_model(tmp_path / "base", model.to(torch.bfloat16))  # stored in bf16, as most hub models are
    check = load_script()
    code = check.main(["--allow-cpu", "--embedded", "none", "--pretrained", "pretrained-smoke", "--scale", "0.01",
                       "--base", str(tmp_path / "base"), "--out", str(tmp_path / "out")])
    assert code == 0
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    (run,) = results["runs"]
    assert [r["stage"] for r in run["stages"]] == ["base", "sft", "rm", "ppo", "dpo", "simpo", "orpo", "kto", "tools",
                                                   "grpo"]
    assert all(r["seconds"] >= 0 and r["peak_mb"] > 0 for r in run["stages"])
    assert {"sft", "rm", "ppo", "dpo", "grpo"} <= set(run["report"]) and run["base_model"] == str(tmp_path / "base")
    assert "pretrained-smoke   sft" in capsys.readouterr().out


def test_scaled_cuts_every_stage_and_keeps_at_least_one_step():
    from embiggen.presets import PRESETS

    check = load_script()
    small = check.scaled(PRESETS["pretrained-lora"], 0.25)
    assert small.sft.steps == 75 and small.ppo.steps == 15 and small.ppo.rounds == 2
    tiny = check.scaled(PRESETS["pretrained-smoke"], 0.01)
    assert (tiny.sft.steps, tiny.ppo.steps, tiny.ppo.rounds, tiny.tools.train.steps, tiny.kto.steps) == (1, 1, 1, 1, 1)
    assert tiny.sft.optim.lr == PRESETS["pretrained-smoke"].sft.optim.lr  # only the steps change


def test_without_a_gpu_it_says_so_and_stops(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script runs")
    assert load_script().main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
