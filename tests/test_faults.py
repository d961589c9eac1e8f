"""Faults and bad input (issue 16): each user-facing problem is one line naming what to fix, with
exit code 2 and no traceback unless --debug asks for it."""

from __future__ import annotations

import os

import pytest

from embiggen import cli, commands
from embiggen.errors import UserError
from embiggen.utils import pick_device, set_threads


def run_cli(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return code, out.out, out.err


@pytest.mark.parametrize("value", ["abc", "-2", "0", "1.5"])
def test_bad_thread_counts_are_one_line_naming_the_variable(value, monkeypatch, capsys):
    monkeypatch.setenv("EMBIGGEN_THREADS", value)
    with pytest.raises(UserError, match="EMBIGGEN_THREADS must be a positive whole number"):
        set_threads()
    code, _, err = run_cli(["config", "--stage", "base"], capsys)
    assert code == 2 and err.count("\n") == 1 and "EMBIGGEN_THREADS" in err


def test_more_threads_than_cores_warns(monkeypatch):
    monkeypatch.setenv("EMBIGGEN_THREADS", str((os.cpu_count() or 1) + 7))
    try:
        with pytest.warns(UserWarning, match="more than the .* CPU cores"):
            set_threads()
    finally:
        set_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "tpu9", "mps"])
def test_a_device_that_is_not_here_is_refused_by_name(device, monkeypatch, capsys):
    import torch
    if (device.startswith("cuda") and torch.cuda.is_available()) or (device == "mps" and torch.backends.mps.is_available()):
        pytest.skip(f"{device} is available here")
    monkeypatch.setenv("EMBIGGEN_DEVICE", device)
    with pytest.raises(UserError, match="EMBIGGEN_DEVICE"):
        pick_device()
    code, _, err = run_cli(["sample", "--model", "/nonexistent", "Alma"], capsys)
    assert code == 2 and "EMBIGGEN_DEVICE" in err or "--model" in err
    monkeypatch.setenv("EMBIGGEN_DEVICE", "cpu")
    assert pick_device().type == "cpu"


def test_model_paths_are_checked_before_loading(tmp_path, capsys):
    code, _, err = run_cli(["sample", "--model", str(tmp_path / "nope"), "Alma"], capsys)
    assert code == 2 and "no such folder" in err and str(tmp_path / "nope") in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["chat", "--model", str(tmp_path / "empty")], capsys)
    assert code == 2 and "not a model folder (it has no config.json)" in err
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    code, _, err = run_cli(["sample", "--model", str(tmp_path / "pickled"), "Alma"], capsys)
    assert code == 2 and "no safetensors weights" in err


@pytest.mark.parametrize("flags, says", [(["--top-p", "2"], "--top-p must be above 0 and at most 1"),
                                         (["--top-p", "0"], "--top-p must be above 0"),
                                         (["-n", "0"], "-n must be at least 1"), (["-n", "-2"], "-n must be at least 1"),
                                         (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
                                         (["--top-k", "-1"], "--top-k must be 0 or more"),
                                         (["--temperature", "-1"], "--temperature must be positive")])
def test_generation_options_are_checked_before_loading(flags, says, capsys):
    code, _, err = run_cli(["sample", "--model", "/nonexistent", *flags, "Alma"], capsys)
    assert code == 2 and says in err


def test_long_prompts_are_cut_from_the_left_and_control_characters_escaped(tiny_base, capsys):
    from embiggen.lm.model import context_length
    long = " ".join(["Alma"] * 5000)
    code, out, err = run_cli(["sample", "--model", str(tiny_base.path), "--max-new-tokens", "4", "-n", "1", long],
                             capsys)
    context = context_length(tiny_base.model)
    assert code == 0 and "warning: the prompt is" in err and f"this model reads {context}" in err
    assert len(out) < 2000  # not the whole prompt echoed back
    code, out, _ = run_cli(["sample", "--model", str(tiny_base.path), "--temperature", "0", "--max-new-tokens", "2",
                            "Alma \x1b[31mred\x07"], capsys)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\\x1b[31mred\\x07" in out


def test_chat_cuts_a_long_message_but_keeps_the_chat_template(tiny_base, capsys):
    from embiggen.lm.model import context_length
    from embiggen.lm.tokenizer import chat_prompt, encode
    seen = []
    original = commands.generate

    def spy(model, tokenizer, prompts, **kw):
        seen.extend(prompts)
        return original(model, tokenizer, prompts, **kw)

    commands.generate = spy
    try:
        commands.chat_reply(tiny_base.model, tiny_base.tokenizer, " ".join(["Alma"] * 3000), max_new_tokens=8)
    finally:
        commands.generate = original
    before, after = chat_prompt(tiny_base.tokenizer, "MESSAGE").split("MESSAGE")
    assert seen[0].startswith(before) and seen[0].endswith(after) and "Alma" in seen[0]  # the template kept whole
    assert len(encode(tiny_base.tokenizer, seen[0])) + 8 <= context_length(tiny_base.model)
    assert "for the chat template): its first" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume_and_debug_shows_tracebacks(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run", interrupted)
    code, _, err = run_cli(["run", "--preset", "smoke"], capsys)
    assert code == 130 and "interrupted; run the same command again to resume" in err
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--debug", "run", "--preset", "smoke"])

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(commands, "run", bug)
    code, _, err = run_cli(["run", "--preset", "smoke"], capsys)
    assert code == 1 and err.count("\n") == 1 and "ZeroDivisionError" in err and "--debug" in err
    monkeypatch.setenv("EMBIGGEN_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["run", "--preset", "smoke"])


# ---- a cache that heals itself ---------------------------------------------------------------
@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBIGGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def weights_digest(path):
    from embiggen.utils import file_digest
    return file_digest(path / "model.safetensors")


CORRUPTIONS = {
    "truncated weights": lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:999]),
    "zero-length weights": lambda p: (p / "model.safetensors").write_bytes(b""),
    "zero-filled weights": lambda p: (p / "model.safetensors").write_bytes(
        bytes((p / "model.safetensors").stat().st_size)),
    "random bytes inside the weights": lambda p: _scribble(p / "model.safetensors"),
    "garbage train_log.json": lambda p: (p / "train_log.json").write_text("garbage"),
    "empty train_log.json": lambda p: (p / "train_log.json").write_text("{}"),
    "deleted tokenizer": lambda p: (p / "tokenizer.json").unlink(),
}


def _scribble(path):
    data = bytearray(path.read_bytes())
    data[-4000:-3000] = os.urandom(1000)  # inside the tensors: the header still parses
    path.write_bytes(bytes(data))


def test_each_kind_of_corrupt_cached_file_is_moved_aside_and_rebuilt(tiny_preset, fresh_cache, capsys):
    from embiggen.chain import train_or_load_base
    first = train_or_load_base(tiny_preset, progress=False)
    digest = weights_digest(first.path)
    assert oct(first.path.stat().st_mode & 0o777) == "0o755"  # a shared cache is readable by others
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in first.path.iterdir())
    capsys.readouterr()
    for what, corrupt in CORRUPTIONS.items():
        corrupt(first.path)
        again = train_or_load_base(tiny_preset, progress=False)
        err = capsys.readouterr().err
        assert f"warning: {first.path}:" in err and "moved it to" in err and "rebuilding it" in err, what
        assert weights_digest(again.path) == digest, what  # rebuilt, bit-identical (same seed)
        aside = err.split("moved it to ")[1].split(" and rebuilding")[0]
        assert os.path.isdir(aside), what
    assert train_or_load_base(tiny_preset, progress=False).path == first.path
    assert "warning" not in capsys.readouterr().err  # a healthy entry just loads


def test_a_preference_file_cut_at_a_line_boundary_is_caught(tmp_path):
    from embiggen.utils import atomic_dir, verify_entry
    folder = tmp_path / "prefs"
    with atomic_dir(folder) as tmp:
        (tmp / "eval_pairs.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n')
    assert verify_entry(folder) is None
    (folder / "eval_pairs.jsonl").write_text('{"a": 1}\n{"a": 2}\n')  # still valid JSON lines: only the manifest knows
    assert "eval_pairs.jsonl has 18 bytes, not the 27 written" == verify_entry(folder)


def test_a_corrupt_resume_point_is_moved_aside_and_training_starts_again(tmp_path, capsys):
    import torch

    from embiggen.lm.training import load_resume_point, save_resume_point
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    folder = tmp_path / ".entry.resume"
    save_resume_point(folder, model, optimizer, torch.Generator(), {"step": 7})
    assert load_resume_point(folder, model, optimizer, torch.Generator())["step"] == 7
    (folder / "state.json").write_text("{")
    assert load_resume_point(folder, model, optimizer, torch.Generator()) is None
    assert "training starts from the beginning" in capsys.readouterr().err and not folder.exists()
    assert load_resume_point(folder, model, optimizer, torch.Generator()) is None  # and the next run is not stuck


def test_orphaned_temporary_folders_are_cleaned_and_live_ones_kept(tmp_path):
    from embiggen.utils import clean_orphans
    dead = tmp_path / ".entry.tmp-999999999-abc"
    live = tmp_path / f".entry.tmp-{os.getpid()}-abc"
    dead.mkdir()
    live.mkdir()
    assert clean_orphans(tmp_path) == [dead] and live.exists() and not dead.exists()


TRAIN_TINY = """
import sys
from dataclasses import replace
from embiggen.chain import train_or_load_base
from embiggen.presets import ModelConfig, OptimConfig, PretrainConfig, get_preset
smoke = get_preset("smoke")
preset = replace(smoke, n_people=8, n_unknown=4, train_documents=600, val_documents=60, vocab_size=300,
                 model=ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=64),
                 pretrain=PretrainConfig(steps=int(sys.argv[1]), batch_size=8, seq_len=32, eval_every=10,
                                         eval_batches=2, optim=OptimConfig(lr=3e-3, warmup_steps=5)))
print(train_or_load_base(preset, progress=False).path)
"""


def _tiny_run(cache, steps, **kw):
    import subprocess
    import sys
    env = {**os.environ, "EMBIGGEN_CACHE": str(cache), "EMBIGGEN_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", TRAIN_TINY, str(steps)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_four_runs_at_once_on_one_fresh_cache_all_finish_with_one_entry(tmp_path):
    runs = [_tiny_run(tmp_path / "cache", 60) for _ in range(4)]
    outs = [r.communicate(timeout=300) for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0, 0], [e for _, e in outs]
    paths = {o.strip() for o, _ in outs}
    assert len(paths) == 1
    entries = [p for p in (tmp_path / "cache" / "base").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and not list((tmp_path / "cache" / "base").glob(".*.tmp-*"))


def test_a_run_killed_at_a_random_point_resumes_to_the_same_weights(tmp_path):
    import random
    import signal
    import time

    def first_resume_point(run, cache) -> float:  # the time at which `run` wrote its first resume point
        deadline = time.time() + 120
        while not list(cache.glob("base/.*.resume")) and run.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        return time.time()

    whole = _tiny_run(tmp_path / "whole", 200)
    seen = first_resume_point(whole, tmp_path / "whole")
    assert whole.wait(300) == 0
    training_left = time.time() - seen  # how long this machine trains after the first resume point (about 1.3 s here)
    expected = weights_digest(next(p for p in (tmp_path / "whole" / "base").iterdir() if not p.name.startswith(".")))
    killed = _tiny_run(tmp_path / "killed", 200)
    first_resume_point(killed, tmp_path / "killed")
    assert killed.poll() is None, "the run finished before its first resume point was seen"
    time.sleep(random.Random().uniform(0.05, 0.7) * training_left)  # a random point of the training after it
    assert killed.poll() is None, "the run finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    resumed = _tiny_run(tmp_path / "killed", 200)
    assert resumed.wait(300) == 0
    entry = next(p for p in (tmp_path / "killed" / "base").iterdir() if not p.name.startswith("."))
    assert weights_digest(entry) == expected


# ---- where results go ------------------------------------------------------------------------
def test_an_unwritable_cache_or_out_is_refused_before_training(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EMBIGGEN_CACHE", str(blocker / "cache"))
    code, _, err = run_cli(["run", "--preset", "smoke", "--stages", "base", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "EMBIGGEN_CACHE (the model cache): cannot write in" in err
    monkeypatch.setenv("EMBIGGEN_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(["run", "--preset", "smoke", "--stages", "base", "--out", str(blocker / "out")], capsys)
    assert code == 2 and "--out (the report's folder): cannot write in" in err
    assert not (tmp_path / "cache" / "base").exists()  # refused before any training


def test_a_garbage_report_is_moved_aside_and_nan_is_never_written(tmp_path, capsys):
    import json
    import math

    from embiggen.pipeline import read_report, strict_json
    path = tmp_path / "report.json"
    path.write_text("garbage{")
    assert read_report(path) == {} and "is not a report Embiggen wrote" in capsys.readouterr().err
    assert not path.exists() and list(tmp_path.glob("report.json.unreadable-*"))
    report = {"ppo": {"kl": math.nan, "gold": 0.5}}
    with pytest.raises(UserError, match=r"stage ppo measured a figure that is not a number \(ppo.kl\)"):
        strict_json(report, "ppo")
    report = {"ppo": {"honest_rate_unknown_person": math.nan, "gold": 0.5}}  # a rate of no prompts
    assert json.loads(strict_json(report, "ppo"))["ppo"]["honest_rate_unknown_person"] is None


def test_after_a_resume_train_seconds_and_tokens_per_second_agree(tiny_preset, fresh_cache):
    """A run resumed from an interrupted one counts the interrupted run's loop seconds in
    train_seconds too, as tokens_per_second does."""
    import torch

    from embiggen.chain import train_or_load_base
    from embiggen.lm.training import resume_dir

    class Interrupt(Exception):
        pass

    def stop(step, log):  # after the resume point of step 20 is written, at the evaluation of step 40
        if step >= tiny_preset.pretrain.steps:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_or_load_base(tiny_preset, progress=False, callback=stop)
    torch.manual_seed(0)
    resumed = train_or_load_base(tiny_preset, progress=False)
    assert not resume_dir(resumed.path).exists() and resumed.log.resumed_seconds > 0
    info = resumed.info
    assert info["train_seconds"] >= resumed.log.seconds  # the loop's seconds, earlier processes' included
    assert abs(info["train_tokens"] / resumed.log.seconds - info["tokens_per_second"]) < 1


def test_a_user_error_in_a_notebook_is_one_line(monkeypatch, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    import embiggen.notebook.session as session
    shell = InteractiveShell.instance()
    monkeypatch.setattr(session, "get_ipython", lambda: shell)
    shown = []
    monkeypatch.setattr(shell, "_showtraceback", lambda etype, evalue, stb: shown.extend(stb))
    session.setup("smoke")
    result = shell.run_cell("from embiggen.presets import get_preset\nget_preset('huge')")
    assert not result.success  # still an error: nbval and Run All stop on it
    assert len(shown) == 1 and shown[0].startswith("UserError: unknown preset 'huge'")  # one line, no traceback
    result = shell.run_cell("1 / 0")
    assert len(shown) > 2  # anything else keeps its full traceback
    InteractiveShell.clear_instance()
