"""Faults and bad input (issue 16): each user-facing problem is one line naming what to fix, with
exit code 2 and no traceback unless --debug asks for it."""

from __future__ import annotations

import os

import pytest

from embiggen import cli
from embiggen.utils import UserError, pick_device, set_threads


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
    from embiggen.model import context_length
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
    from embiggen.model import context_length
    from embiggen.tokenizer import chat_prompt, encode
    seen = []
    original = cli.generate

    def spy(model, tokenizer, prompts, **kw):
        seen.extend(prompts)
        return original(model, tokenizer, prompts, **kw)

    cli.generate = spy
    try:
        cli.chat_reply(tiny_base.model, tiny_base.tokenizer, " ".join(["Alma"] * 3000), max_new_tokens=8)
    finally:
        cli.generate = original
    before, after = chat_prompt(tiny_base.tokenizer, "MESSAGE").split("MESSAGE")
    assert seen[0].startswith(before) and seen[0].endswith(after) and "Alma" in seen[0]  # the template kept whole
    assert len(encode(tiny_base.tokenizer, seen[0])) + 8 <= context_length(tiny_base.model)
    assert "for the chat template): its first" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume_and_debug_shows_tracebacks(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    code, _, err = run_cli(["run", "--preset", "smoke"], capsys)
    assert code == 130 and "interrupted; run the same command again to resume" in err
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--debug", "run", "--preset", "smoke"])

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "run", bug)
    code, _, err = run_cli(["run", "--preset", "smoke"], capsys)
    assert code == 1 and err.count("\n") == 1 and "ZeroDivisionError" in err and "--debug" in err
    monkeypatch.setenv("EMBIGGEN_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["run", "--preset", "smoke"])
