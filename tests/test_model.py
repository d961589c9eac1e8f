import pytest
import torch
from transformers import AutoModelForCausalLM

from embiggen.lm.model import build_model, load_pretrained
from embiggen.presets import ModelConfig


def test_params_count_tied_weights_once(tiny_base):
    model = tiny_base.model
    assert model.config.tie_word_embeddings
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    naive = sum(p.numel() for p in model.parameters())  # parameters() already dedups tied tensors
    by_name = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert tiny_base.params == naive == by_name - emb.numel()


def test_save_load_round_trip_gives_same_logits(tiny_base, tmp_path):
    tiny_base.model.save_pretrained(tmp_path)
    tiny_base.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    model, tok = load_pretrained(tmp_path)
    ids = tok("Alma lives in", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, tiny_base.model(input_ids=ids).logits, atol=1e-6)


def test_load_any_local_hf_causal_lm(tiny_base, tmp_path):
    """A GPT-2 (not Llama) model saved locally loads through the same path, pad token added."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(tiny_base.tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    tok = tiny_base.tokenizer
    tok.save_pretrained(tmp_path)
    model, tokenizer = load_pretrained(str(tmp_path))
    assert model.__class__.__name__ == "GPT2LMHeadModel" and tokenizer.padding_side == "left"
    from embiggen.lm.generate import generate

    out = generate(model, tokenizer, ["Alma lives in"], max_new_tokens=3)
    assert isinstance(out[0], str)


def test_unloadable_name_gives_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="embedded default"):
        load_pretrained("no-such-org/no-such-model-anywhere")


def test_build_model_is_seeded(tiny_base):
    cfg = ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    a = build_model(cfg, tiny_base.tokenizer, seed=3)
    b = build_model(cfg, tiny_base.tokenizer, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert isinstance(a, type(AutoModelForCausalLM.from_config(a.config)))
