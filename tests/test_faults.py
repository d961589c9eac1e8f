"""Faults and bad input (issue 16): each user-facing problem is one line naming what to fix, with
exit code 2 and no traceback unless --debug asks for it."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from embiggen import cli, commands
from embiggen.errors import UserError
from embiggen.presets import OptimConfig
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
    monkeypatch.setenv("EMBIGGEN_THREADS", str((os.cpu_count() or 1) + 1))
    try:
        with pytest.warns(UserWarning, match="more than the .* CPU cores"):
            set_threads()
    finally:
        set_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.mark.parametrize("value", ["100000", "99999999999999999999", str(4 * (os.cpu_count() or 1) + 1)])
def test_thread_counts_far_above_the_cores_are_refused_naming_the_variable(value, monkeypatch, capsys):
    """100000 threads exhaust the machine (a segfault); 20 digits overflowed torch's own check."""
    monkeypatch.setenv("EMBIGGEN_THREADS", value)
    with pytest.raises(UserError, match=r"EMBIGGEN_THREADS=\d+.* is far more than the \d+ CPU cores here"):
        set_threads()
    code, _, err = run_cli(["config", "--stage", "base"], capsys)
    assert code == 2 and err.count("\n") == 1 and "EMBIGGEN_THREADS" in err and "use " in err
    monkeypatch.setenv("EMBIGGEN_THREADS", "\u0662")  # a digit, but not an ASCII one
    with pytest.raises(UserError, match="EMBIGGEN_THREADS must be a positive whole number"):
        set_threads()


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
                                         (["--temperature", "-1"], "--temperature must be 0 (greedy decoding) or from"),
                                         (["--temperature", "nan"], "--temperature must be 0 (greedy decoding) or from"),
                                         (["--temperature", "inf"], "--temperature must be 0 (greedy decoding) or from"),
                                         (["--temperature", "1e-45"], "--temperature must be 0 (greedy decoding) or"),
                                         (["--temperature", "1e9"], "--temperature must be 0 (greedy decoding) or"),
                                         (["--top-p", "nan"], "--top-p must be above 0"),
                                         (["-n", "99999999999999999999"], "-n must be at least 1 and at most"),
                                         (["--max-new-tokens", "99999999999999999999"], "--max-new-tokens must be"),
                                         (["--top-k", "99999999999999999999"], "--top-k must be 0 or more"),
                                         (["--seed", str(2 ** 64)], "--seed must be a whole number from 0"),
                                         (["--seed", "-1"], "--seed must be a whole number from 0")])
def test_generation_options_are_checked_before_loading(flags, says, capsys):
    code, _, err = run_cli(["sample", "--model", "/nonexistent", *flags, "Alma"], capsys)
    assert code == 2 and says in err and err.count("\n") == 1 and len(err) < 300  # a 20-digit value is cut


def test_the_bounds_of_the_checked_options_still_sample(tiny_base, capsys):
    """The edges the checks let through work: the lowest temperature does not overflow."""
    from embiggen.commands import MIN_TEMPERATURE
    code, out, err = run_cli(["sample", "--model", str(tiny_base.path), "--temperature", str(MIN_TEMPERATURE), "-n",
                              "2", "--max-new-tokens", "3", "--seed", str(2 ** 64 - 1), "--top-k", "99999", "Alma"],
                             capsys)
    assert code == 0 and out.count("[") >= 2, err


def test_a_prefix_that_is_not_utf8_is_one_line(tiny_base, capsys):
    """Bytes that are not UTF-8 reach Python as lone surrogates ("surrogateescape")."""
    code, _, err = run_cli(["sample", "--model", str(tiny_base.path), "Alma \udcff lives"], capsys)
    assert code == 2 and "the prefix is not valid UTF-8 (byte 0xff at character 6)" in err


def test_a_chat_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(tiny_base, monkeypatch, capsys):
    import subprocess
    import sys
    lines = iter(["Alma \udcff lives", "Alma", "quit"])
    answered = []
    monkeypatch.setattr(commands, "load_model_by_name", lambda *a, **k: (tiny_base.model, tiny_base.tokenizer))
    monkeypatch.setattr(commands, "chat_reply", lambda model, tok, message, **k: answered.append(message) or "ok")
    monkeypatch.setattr(type(tiny_base.tokenizer), "chat_template", "{{ messages }}", raising=False)
    args = cli.build_parser().parse_args(["chat", "--model", "sft", "--preset", "smoke"])
    assert commands._cmd_chat(args, read=lambda prompt: next(lines)) == 0
    assert answered == ["Alma"] and "that message is not valid UTF-8 (byte 0xff at character 6)" in capsys.readouterr().err
    # the real stdin: a line of bad bytes piped in, then a good one, then quit
    script = ("import sys\nfrom embiggen import commands\n"
              "commands.load_model_by_name = lambda *a, **k: (None, type('T', (), {'chat_template': 'x'})())\n"
              "commands.chat_reply = lambda m, t, message, **k: 'echo ' + message\n"
              "from embiggen.cli import build_parser\n"
              "sys.exit(commands._cmd_chat(build_parser().parse_args(['chat', '--preset', 'smoke'])))\n")
    done = subprocess.run([sys.executable, "-c", script], input=b"Alma \xff lives\nAlma\nquit\n", capture_output=True,
                          timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0, done.stderr.decode()
    assert b"echo Alma" in done.stdout and b"not valid UTF-8 (byte 0xff" in done.stderr


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


INTERRUPT_WHILE_IMPORTING = """
import sys
class Interrupt:  # Ctrl-C arriving while the module `name` is being imported
    def __init__(self, name): self.name = name
    def find_spec(self, name, path=None, target=None):
        if name == self.name: raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt(sys.argv[1]))
from embiggen.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("module, argv", [("embiggen.presets", ["config"]), ("argparse", ["config"]),
                                          ("torch", ["config", "--stage", "base"]),
                                          ("transformers", ["config", "--stage", "base"])])
def test_ctrl_c_while_the_command_line_starts_is_one_line(module, argv):
    """The console script is `embiggen.__main__:main`, which imports the command line's modules
    (and, through them, torch) inside its handling of Ctrl-C."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", INTERRUPT_WHILE_IMPORTING, module, *argv], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == "interrupted; run the same command again to resume"


def test_the_console_script_is_the_guarded_entry_point():
    import tomllib
    from pathlib import Path
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"embiggen": "embiggen.__main__:main"}


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
    "a number for a file's manifest entry": lambda p: _edit_manifest(p, lambda m: {**m, "model.safetensors": 7}),
    "{} for a file's manifest entry": lambda p: _edit_manifest(p, lambda m: {**m, "train_log.json": {}}),
    "a size that is text": lambda p: _edit_manifest(p, lambda m: {**m, "config.json": {**m["config.json"], "size": "9"}}),
    "a manifest that is a list": lambda p: _edit_manifest(p, lambda m: list(m)),
    "an empty manifest": lambda p: _edit_manifest(p, lambda m: {}),
    "a manifest naming a file outside the entry": lambda p: _edit_manifest(
        p, lambda m: {**m, "../../../etc/hostname": {"size": 1, "sha256": "0" * 64}}),
    "a deleted manifest": lambda p: (p / "manifest.json").unlink(),  # written since the cache was marked: damage
}


def _edit_manifest(path, change):
    import json
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(change(manifest)))


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
    for not_strict in ['{"base": {"val_loss": Infinity}}', '{"base": {"val_loss": 1e999}}', '{"base": NaN}',
                       '{"base": {"x": -Infinity}}']:
        path.write_text(not_strict)
        assert read_report(path) == {} and "is not a report Embiggen wrote" in capsys.readouterr().err, not_strict
        assert not path.exists()
    path.write_text('{"base": {"val_loss": 1.5e300}}')  # large, but a float
    assert read_report(path) == {"base": {"val_loss": 1.5e300}}
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


# ---- an entry is moved aside only for what it got wrong itself -------------------------------
def test_what_is_the_entrys_fault_and_what_is_the_machines():
    import errno
    import json

    from safetensors import SafetensorError

    from embiggen.utils import entry_at_fault
    ours = [SafetensorError("Error while deserializing header: HeaderTooLarge"), json.JSONDecodeError("x", "{", 0),
            FileNotFoundError(errno.ENOENT, "No such file", "config.json"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x"),
            OSError("Error no file named model.safetensors found in directory /cache/base/x")]
    machine = [RuntimeError("can't start new thread"), MemoryError(), OSError(errno.ENOMEM, "Cannot allocate memory"),
               OSError(errno.EMFILE, "Too many open files"), PermissionError(errno.EACCES, "Permission denied"),
               RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
               SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                               "\"No space left on device\" }) (os error 28)"),
               SafetensorError("I/O error: Cannot allocate memory (os error 12)"), KeyError("log"),
               ValueError("some other problem")]
    assert [entry_at_fault(e) for e in ours] == [True] * len(ours)
    assert [entry_at_fault(e) for e in machine] == [False] * len(machine)


@pytest.mark.parametrize("problem", [RuntimeError("can't start new thread"), MemoryError(),
                                     RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_a_good_entry_that_fails_to_load_for_the_machine_stays_in_the_cache(problem, tiny_preset, fresh_cache,
                                                                            monkeypatch, capsys):
    """Out of memory or threads while loading: said as itself, and the entry is neither moved
    aside nor retrained (on a real model, hours)."""
    import embiggen.chain as chain
    from embiggen.utils import EntryLoadError
    first = chain.train_or_load_base(tiny_preset, progress=False)
    digest, mtime = weights_digest(first.path), first.path.stat().st_mtime_ns
    real = chain.load_checkpoint

    def failing(*a, **k):
        raise problem

    monkeypatch.setattr(chain, "load_checkpoint", failing)
    monkeypatch.setattr(chain, "pretrain", lambda *a, **k: pytest.fail("a good entry was retrained"))
    with pytest.raises(EntryLoadError, match="its files are intact, so it stays in the cache") as caught:
        chain.train_or_load_base(tiny_preset, progress=False)
    assert caught.value.__cause__ is problem
    assert "moved it to" not in capsys.readouterr().err
    assert first.path.stat().st_mtime_ns == mtime and weights_digest(first.path) == digest
    assert not list(first.path.parent.glob(".*.broken-*"))
    monkeypatch.setattr(chain, "load_checkpoint", real)  # once memory is back, the same entry loads
    assert chain.train_or_load_base(tiny_preset, progress=False).path == first.path
    monkeypatch.setattr(chain, "load_checkpoint", failing)  # and the command line says it in one line, exit 1
    monkeypatch.setattr(commands, "announce_preset", lambda args: tiny_preset)
    code, _, err = run_cli(["sample", "--model", "base", "Alma"], capsys)
    assert code == 1 and err.count("\n") == 1 and "its files are intact" in err and "moved it to" not in err


def test_a_resume_point_that_fails_to_load_for_the_machine_is_kept(tmp_path, monkeypatch):
    import torch

    import embiggen.lm.training as training
    from embiggen.utils import EntryLoadError
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    folder = tmp_path / ".entry.resume"
    training.save_resume_point(folder, model, optimizer, torch.Generator(), {"step": 7})
    monkeypatch.setattr(training, "load_model", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(EntryLoadError, match="stays in the cache"):
        training.load_resume_point(folder, model, optimizer, torch.Generator())
    assert (folder / "state.json").exists()


def test_a_legacy_entry_without_a_manifest_is_taken_and_one_written_since_the_mark_is_rebuilt(
        tiny_preset, fresh_cache, capsys):
    """The cache is marked with its format when first written (`cache-format.json`); an entry
    without a manifest is taken as it is only if it is older than the mark (it predates sealing)."""
    import json
    import time

    from embiggen.chain import train_or_load_base
    from embiggen.utils import CACHE_FORMAT, FORMAT_FILE
    first = train_or_load_base(tiny_preset, progress=False)
    assert json.loads((fresh_cache / FORMAT_FILE).read_text()) == {"format": CACHE_FORMAT}
    (first.path / "manifest.json").unlink()
    capsys.readouterr()
    train_or_load_base(tiny_preset, progress=False)
    assert "it has no manifest.json, which every entry written since" in capsys.readouterr().err
    assert (first.path / "manifest.json").exists()  # rebuilt, sealed
    (first.path / "manifest.json").unlink()  # an entry older than the mark: taken as it is...
    past = time.time() - 3600
    os.utime(first.path, (past, past))
    train_or_load_base(tiny_preset, progress=False)
    assert "warning" not in capsys.readouterr().err and not (first.path / "manifest.json").exists()
    (first.path / "model.safetensors").write_bytes(b"\0" * 64)  # ...and if its files are broken, rebuilt
    os.utime(first.path, (past, past))
    train_or_load_base(tiny_preset, progress=False)
    assert "it could not be loaded (SafetensorError" in capsys.readouterr().err


def test_a_cache_of_a_newer_format_is_refused_by_name(tiny_preset, fresh_cache, capsys):
    import json

    from embiggen.utils import FORMAT_FILE
    fresh_cache.mkdir(parents=True)
    (fresh_cache / FORMAT_FILE).write_text(json.dumps({"format": 99}))
    code, _, err = run_cli(["run", "--preset", "smoke", "--stages", "base", "--out", str(fresh_cache.parent / "o")],
                           capsys)
    assert code == 2 and "was written by a newer Embiggen (cache format 99" in err and "EMBIGGEN_CACHE" in err


# ---- a read-only cache ---------------------------------------------------------------------------
@pytest.fixture
def made_read_only():
    """A context manager that makes a folder (and all in it) read-only for this process: for root,
    whom permissions do not stop, with the immutable attribute (chattr +i, EPERM); otherwise
    with chmod (EACCES). Undone afterwards."""
    import contextlib
    import subprocess
    done = []

    @contextlib.contextmanager
    def read_only(folder):
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-R", "+i", str(folder)], check=True)
            done.append(lambda: subprocess.run(["chattr", "-R", "-i", str(folder)], check=True))
        else:
            subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
            done.append(lambda: subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True))
        try:
            yield folder
        finally:
            done.pop()()

    yield read_only
    for undo in done:
        undo()


def test_a_complete_read_only_cache_is_read_and_writing_it_is_one_line(tiny_preset, fresh_cache, made_read_only,
                                                                        monkeypatch, capsys):
    import dataclasses

    from embiggen.chain import train_or_load_base
    from embiggen.utils import CacheReadOnly
    first = train_or_load_base(tiny_preset, progress=False)
    for lock in first.path.parent.glob(".*.lock"):
        lock.unlink()  # a cache copied elsewhere without its lock files
    with made_read_only(fresh_cache):
        assert train_or_load_base(tiny_preset, progress=False).path == first.path  # read without a lock
        other = dataclasses.replace(tiny_preset, seed=tiny_preset.seed + 1)
        with pytest.raises(CacheReadOnly, match=r"EMBIGGEN_CACHE=.* cannot be written \(read-only\), and base/"):
            train_or_load_base(other, progress=False)
        monkeypatch.setattr(commands, "announce_preset", lambda args: tiny_preset)
        code, out, err = run_cli(["sample", "--model", "base", "-n", "1", "--max-new-tokens", "3", "Alma"], capsys)
        assert code == 0 and out.startswith("[1] Alma"), err
        monkeypatch.setattr(commands, "announce_preset", lambda args: other)
        code, _, err = run_cli(["sample", "--model", "base", "--train", "Alma"], capsys)
        assert code == 2 and err.count("\n") == 1 and "EMBIGGEN_CACHE=" in err and "read-only" in err


def test_a_cache_mounted_read_only_is_read(tmp_path):
    """The real thing where this machine allows it: a read-only bind mount (EROFS) in a user and
    mount namespace of its own (`unshare -rm`), and a process that loads a complete entry from it."""
    import shutil
    import subprocess
    import sys
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces here to mount a folder read-only in (the chattr/chmod test covers the rest)")
    cache = tmp_path / "cache"
    built = _tiny_run(cache, 20)
    out, err = built.communicate(timeout=300)
    assert built.returncode == 0, err
    script = f"mount --bind -o ro {cache} {cache} && exec {sys.executable} -c \"$0\" 20"
    env = {**os.environ, "EMBIGGEN_CACHE": str(cache), "EMBIGGEN_THREADS": "1"}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, TRAIN_TINY], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == out.strip(), done.stderr
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script.replace(" 20", " 21"), TRAIN_TINY],
                          capture_output=True, text=True, timeout=300, env=env)  # another entry: it must be written
    assert done.returncode != 0 and "EMBIGGEN_CACHE=" in done.stderr and "read-only" in done.stderr


def test_a_notebook_on_a_read_only_cache_shows_one_line_naming_the_variable(tiny_preset, fresh_cache, made_read_only,
                                                                            monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    import embiggen.notebook.session as session
    fresh_cache.mkdir(parents=True)
    shell = InteractiveShell.instance()
    monkeypatch.setattr(session, "get_ipython", lambda: shell)
    shown = []
    monkeypatch.setattr(shell, "_showtraceback", lambda etype, evalue, stb: shown.extend(stb))
    session.setup("smoke")
    shell.user_ns["preset"] = tiny_preset
    with made_read_only(fresh_cache):
        result = shell.run_cell("from embiggen.chain import train_or_load_base\n"
                                "train_or_load_base(preset, progress=False)")
    InteractiveShell.clear_instance()
    assert not result.success and len(shown) == 1, shown
    assert shown[0].startswith("CacheReadOnly: EMBIGGEN_CACHE=") and "read-only" in shown[0]


# ---- a full disk ---------------------------------------------------------------------------------
def test_a_full_disk_says_so_names_the_folder_and_the_run_resumes(tiny_preset, fresh_cache, monkeypatch, capsys):
    """What the safetensors writer raises when the disk fills, turned into one line naming the
    folder; nothing is left half-written, and the next run builds the entry."""
    import embiggen.lm.training as training
    from safetensors import SafetensorError
    from embiggen.utils import DiskFull

    def full(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr(training, "save_model", full)  # the resume point's writer
    monkeypatch.setattr(commands, "announce_preset", lambda args: tiny_preset)
    code, _, err = run_cli(["sample", "--model", "base", "--train", "Alma"], capsys)
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]  # the rest: bars
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: the disk holding") and "is full" in err
    assert str(fresh_cache / "base") in err and "resumes where it stopped" in err and "--debug" not in err
    assert not list((fresh_cache / "base").glob(".*.tmp-*"))  # no half-written folder left behind
    with pytest.raises(DiskFull):
        from embiggen.chain import train_or_load_base
        train_or_load_base(tiny_preset, progress=False)
    monkeypatch.undo()
    from embiggen.chain import train_or_load_base
    assert train_or_load_base(tiny_preset, progress=False).path.is_dir()  # space freed: the run goes on


def test_a_full_disk_anywhere_else_is_one_line_too(monkeypatch, capsys):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/file")

    monkeypatch.setattr(commands, "run", full)
    code, _, err = run_cli(["run", "--preset", "smoke"], capsys)
    assert code == 2 and err.count("\n") == 1 and "the disk is full" in err and "/somewhere/file" in err


# ---- train_seconds after a resume, for PPO and DPO -----------------------------------------------
def test_a_resumed_dpo_counts_the_interrupted_runs_seconds(tiny_preset, tiny_base, monkeypatch):
    import time

    import embiggen.chain as chain
    import embiggen.lm.training as training
    from embiggen.presets import DPOConfig

    class Interrupt(Exception):
        pass

    cfg = DPOConfig(steps=10, batch_size=4, eval_every=5, optim=OptimConfig(lr=1e-3, warmup_steps=0))
    real_save, real_lr_at = training.save_resume_point, training.lr_at

    def interrupted(*a, **k):
        real_save(*a, **k)
        raise Interrupt

    def slow_lr_at(*a, **k):  # 0.1 s more per step: 0.5 s before the resume point at step 5
        time.sleep(0.1)
        return real_lr_at(*a, **k)

    monkeypatch.setattr(training, "save_resume_point", interrupted)
    monkeypatch.setattr(training, "lr_at", slow_lr_at)
    with pytest.raises(Interrupt):
        chain.train_or_load_dpo(tiny_preset, sft=tiny_base, cfg=cfg, progress=False, device="cpu")
    monkeypatch.setattr(training, "save_resume_point", real_save)
    monkeypatch.setattr(training, "lr_at", real_lr_at)
    resumed = chain.train_or_load_dpo(tiny_preset, sft=tiny_base, cfg=cfg, progress=False, device="cpu")
    assert resumed.log.resumed_seconds >= 0.5
    assert resumed.info["train_seconds"] >= resumed.log.seconds >= resumed.log.resumed_seconds


def test_a_resumed_ppo_counts_the_interrupted_runs_seconds(tiny_base, tmp_path, monkeypatch):
    import time

    import embiggen.chain as chain
    from embiggen.methods.ppo import PPOLog, train_ppo
    from test_ppo import make_trainer, prompts_of

    class Interrupt(Exception):
        pass

    def slow_then_stop(step, row):
        time.sleep(0.3)
        if step == 3:
            raise Interrupt

    prompts = prompts_of(tiny_base, 64)
    with pytest.raises(Interrupt):
        train_ppo(make_trainer(tiny_base), prompts, steps=4, batch_size=16, progress=False, callback=slow_then_stop,
                  resume_dir=tmp_path / "resume", save_every=2)
    log = train_ppo(make_trainer(tiny_base), prompts, steps=4, batch_size=16, progress=False,
                    resume_dir=tmp_path / "resume", save_every=2)
    assert log.resumed_seconds >= 0.6  # the two steps, and their callbacks, before the resume point at step 2
    # and the chain adds them to train_seconds
    trainer = make_trainer(tiny_base)
    trainer.reward_model = SimpleNamespace(path=tmp_path / "rm")
    monkeypatch.setattr(chain, "ppo_trainer", lambda *a, **k: trainer)
    monkeypatch.setattr(chain, "train_ppo", lambda *a, **k: PPOLog([1], [{"step": 1}], resumed_seconds=40.0))
    monkeypatch.setattr(chain, "train_or_load", lambda path, load, train, force=False: train(tmp_path / "ppo"))
    reward = SimpleNamespace(path=tmp_path / "rm")
    tuned = chain.train_or_load_ppo(tiny_base.preset, sft=tiny_base, reward=reward, device="cpu", progress=False)
    assert 40.0 <= tuned.info["train_seconds"] < 60


def test_a_really_full_disk_then_space_freed(tmp_path):
    """The real thing where this machine allows it: a 64 KB tmpfs in a mount namespace of its own
    (`unshare -rm`), too small for the first resume point; then the same tmpfs made larger, and the
    same command finishes."""
    import shutil
    import subprocess
    import sys
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user namespaces here to mount a small disk in (the test above covers the message)")
    disk = tmp_path / "disk"
    disk.mkdir()
    run = f"EMBIGGEN_CACHE={disk}/cache EMBIGGEN_THREADS=1 {sys.executable} -c \"$0\" 40"
    script = (f"mount -t tmpfs -o size=64k tmpfs {disk} && {{ {run}; echo rc=$?; }} && "
              f"mount -o remount,size=20m {disk} && {run} && ls {disk}/cache/base")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, TRAIN_TINY], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "rc=1" in done.stdout and "DiskFull: the disk holding" in done.stderr and "/cache/base is full" in done.stderr
    assert "resumes where it stopped" in done.stderr
    built = [line for line in done.stdout.splitlines() if line.startswith(f"{disk}/cache/base/")]
    assert len(built) == 1 and done.stdout.rstrip().endswith(built[0].rsplit("/", 1)[1])  # the entry, once
