import os
from dataclasses import replace

import pytest
import torch

from embiggen.presets import ModelConfig, OptimConfig, PretrainConfig, get_preset

torch.set_num_threads(int(os.environ.get("EMBIGGEN_THREADS", "2")))
os.environ.pop("EMBIGGEN_BASE", None)  # the tests build their own models: a user's base model must not leak in


@pytest.fixture(scope="session")
def tiny_preset():
    """Smaller than `smoke`: for tests that train."""
    smoke = get_preset("smoke")
    return replace(
        smoke, name="smoke", n_people=8, n_unknown=4, train_documents=600, val_documents=60,
        vocab_size=300,
        model=ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=64),
        pretrain=PretrainConfig(steps=40, batch_size=8, seq_len=32, optim=OptimConfig(lr=3e-3, warmup_steps=5),
                                eval_every=20, eval_batches=2),
        evaluation=replace(smoke.evaluation, n_instruction_probes=16),
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("embiggen-cache")
    old = os.environ.get("EMBIGGEN_CACHE")
    os.environ["EMBIGGEN_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EMBIGGEN_CACHE", None)
    else:
        os.environ["EMBIGGEN_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_splits(tiny_preset):
    from embiggen.data.splits import data_splits

    return data_splits(tiny_preset)


@pytest.fixture(scope="session")
def tiny_base(tiny_preset, cache_dir):
    from embiggen.chain import train_or_load_base

    return train_or_load_base(tiny_preset, progress=False, device="cpu")


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny models: threads only contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_TEXTS = ["Alma lives in Brook. She works as a baker.", "What is 2 + 3? It is 5.", "Bruno keeps a cat."] * 20


@pytest.fixture(scope="session")
def save_tiny_model():
    """`save(path, model)`: `model` saved at `path` with a small BPE tokenizer whose pad token is its
    EOS, as a user's Hugging Face folder would be; returns `path`. `model=None`: a 1-layer Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from embiggen.lm.tokenizer import train_tokenizer

    def save(path, model=None):
        tok = train_tokenizer(TINY_TEXTS, vocab_size=300)
        tok.pad_token = tok.eos_token
        if model is None:
            torch.manual_seed(0)
            model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=64,
                                                 max_position_embeddings=256, eos_token_id=tok.eos_token_id,
                                                 bos_token_id=tok.eos_token_id))
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return path

    return save


@pytest.fixture
def dpo_reference_gaps(monkeypatch):
    """A list that fills, per DPO loss computed, with the largest |log pi - log pi_ref| of its answers."""
    from embiggen.methods import dpo

    gaps = []
    original = dpo.dpo_loss

    def recording(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type):
        gaps.append(max((chosen - ref_chosen).abs().max().item(), (rejected - ref_rejected).abs().max().item()))
        return original(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)

    monkeypatch.setattr(dpo, "dpo_loss", recording)
    return gaps
