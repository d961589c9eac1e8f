import json
import math

import pytest
import torch

import embiggen.chain as chain
from embiggen.chain import train_or_load_base
from embiggen.lm.model import build_model
from embiggen.lm.training import lr_at
from embiggen.methods.pretrain import estimate_loss, get_batch, next_token_loss, pretrain, tokenize_corpus
from embiggen.presets import OptimConfig, PretrainConfig
from embiggen.utils import atomic_dir


def test_lr_schedule_matches_formula():
    cfg = PretrainConfig(steps=110, optim=OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1))
    assert lr_at(0, cfg.steps, cfg.optim) == pytest.approx(0.1) and lr_at(9, cfg.steps, cfg.optim) == pytest.approx(1.0)
    for step in (10, 35, 60, 110):
        progress = (step - 10) / 100
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_at(step, cfg.steps, cfg.optim) == pytest.approx(expected)


def test_batches_are_shifted_windows():
    data = torch.arange(100)
    x, y = get_batch(data, 4, 10, torch.Generator().manual_seed(0))
    assert x.shape == (4, 10) and torch.equal(y, x + 1)


def test_next_token_loss_matches_reference(tiny_base):
    model = tiny_base.model
    x = torch.randint(0, len(tiny_base.tokenizer), (2, 7), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, len(tiny_base.tokenizer), (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(input_ids=x).logits
        total = 0.0
        for b in range(2):
            for t in range(7):
                row = logits[b, t]
                total += -(row[y[b, t]] - torch.logsumexp(row, 0)).item()
        assert next_token_loss(model, x, y).item() == pytest.approx(total / 14, rel=1e-5)


def test_tokenize_corpus_ends_each_document_with_eos(tiny_base):
    tok = tiny_base.tokenizer
    ids = tokenize_corpus(tok, ["Alma lives here.", "Bruno too."])
    assert (ids == tok.eos_token_id).sum() == 2 and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Alma lives here.Bruno too."


def _data(tiny_base, seed):
    docs = tiny_base.world.pretraining_corpus(200, seed=seed)
    return tokenize_corpus(tiny_base.tokenizer, docs)


def test_loss_falls_on_a_tiny_run(tiny_base, tiny_preset):
    train, val = _data(tiny_base, 5), _data(tiny_base, 6)
    model = build_model(tiny_preset.model, tiny_base.tokenizer, seed=0)
    cfg = PretrainConfig(steps=30, batch_size=8, seq_len=32, eval_every=10, eval_batches=2,
                         optim=OptimConfig(lr=3e-3, warmup_steps=3))
    before = estimate_loss(model, val, cfg, "cpu")
    log = pretrain(model, train, val, cfg, device="cpu", progress=False)
    assert log.val_loss[-1] < before - 0.5
    assert log.val_steps == [10, 20, 30] and log.tokens == 30 * 8 * 32


def test_interrupted_run_resumes_to_identical_weights(tiny_base, tiny_preset, tmp_path):
    train, val = _data(tiny_base, 5), _data(tiny_base, 6)
    cfg = PretrainConfig(steps=20, batch_size=4, seq_len=16, eval_every=5, eval_batches=1,
                         optim=OptimConfig(lr=3e-3, warmup_steps=2))
    straight = build_model(tiny_preset.model, tiny_base.tokenizer, seed=0)
    pretrain(straight, train, val, cfg, device="cpu", seed=9, progress=False)

    def interrupt(step, log):
        if step == 10:
            raise KeyboardInterrupt

    resumed = build_model(tiny_preset.model, tiny_base.tokenizer, seed=0)
    with pytest.raises(KeyboardInterrupt):
        pretrain(resumed, train, val, cfg, device="cpu", seed=9, progress=False, resume_dir=tmp_path / "r",
                 callback=interrupt)
    fresh = build_model(tiny_preset.model, tiny_base.tokenizer, seed=0)
    log = pretrain(fresh, train, val, cfg, device="cpu", seed=9, progress=False, resume_dir=tmp_path / "r")
    assert log.steps[0] == 1 and log.steps[-1] == 20 and len(log.steps) == 20
    for (name, a), b in zip(straight.state_dict().items(), fresh.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_atomic_dir_leaves_nothing_when_interrupted(tmp_path):
    final = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.safetensors").write_text("half")
            raise RuntimeError("power cut")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "whole.safetensors").write_text("whole")
    assert (final / "whole.safetensors").read_text() == "whole"


def test_second_call_loads_from_cache(tiny_base, tiny_preset, monkeypatch):
    assert tiny_base.path.parent.name == "base" and tiny_base.path.exists()
    info = json.loads((tiny_base.path / "train_log.json").read_text())
    assert info["params"] == tiny_base.params and info["train_tokens"] == 40 * 8 * 32
    monkeypatch.setattr(chain, "pretrain", lambda *a, **k: pytest.fail("retrained instead of loading"))
    again = train_or_load_base(tiny_preset, progress=False, device="cpu")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(again.model(input_ids=ids).logits, tiny_base.model(input_ids=ids).logits)
    assert again.log.val_loss == tiny_base.log.val_loss


def test_same_seed_same_numbers(tiny_base, tiny_preset, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBIGGEN_CACHE", str(tmp_path))
    again = train_or_load_base(tiny_preset, progress=False, device="cpu", force=True)
    assert again.log.train_loss == tiny_base.log.train_loss


def test_curves_a_callback_records_survive_an_interruption(tiny_base, tiny_preset, tmp_path):
    """What a callback writes into log.metrics goes into the resume point, so a resumed run
    ends with the whole curve, equal to an uninterrupted run's."""
    train, val = _data(tiny_base, 5), _data(tiny_base, 6)
    cfg = PretrainConfig(steps=12, batch_size=4, seq_len=16, eval_every=3, eval_batches=1,
                         optim=OptimConfig(lr=3e-3, warmup_steps=2))

    def record(step, log):
        log.metrics.setdefault("first_weight", []).append(float(next(model.parameters()).flatten()[0]))
        log.metrics.setdefault("steps", []).append(step)
        if interrupt_at == step:
            raise KeyboardInterrupt

    interrupt_at, model = None, build_model(tiny_preset.model, tiny_base.tokenizer, seed=0)
    straight = pretrain(model, train, val, cfg, device="cpu", seed=9, progress=False, callback=record)
    assert straight.metrics["steps"] == [3, 6, 9, 12]

    interrupt_at, model = 9, build_model(tiny_preset.model, tiny_base.tokenizer, seed=0)
    with pytest.raises(KeyboardInterrupt):
        pretrain(model, train, val, cfg, device="cpu", seed=9, progress=False, callback=record, resume_dir=tmp_path / "r")
    interrupt_at, model = None, build_model(tiny_preset.model, tiny_base.tokenizer, seed=0)
    resumed = pretrain(model, train, val, cfg, device="cpu", seed=9, progress=False, callback=record,
                       resume_dir=tmp_path / "r")
    assert resumed.metrics["steps"] == [3, 6, 9, 12]
    assert resumed.metrics["first_weight"] == pytest.approx(straight.metrics["first_weight"], abs=1e-6)


def test_recording_samples_during_training_changes_no_weight(tiny_base, tiny_preset):
    from embiggen.lm.generate import generate

    train, val = _data(tiny_base, 5), _data(tiny_base, 6)
    cfg = PretrainConfig(steps=12, batch_size=4, seq_len=16, eval_every=4, eval_batches=1,
                         optim=OptimConfig(lr=3e-3, warmup_steps=2))
    plain = build_model(tiny_preset.model, tiny_base.tokenizer, seed=0)
    plain_log = pretrain(plain, train, val, cfg, device="cpu", seed=9, progress=False)
    watched = build_model(tiny_preset.model, tiny_base.tokenizer, seed=0)
    prompts = ("Alma lives in", "Once upon a time,")
    log = pretrain(watched, train, val, cfg, device="cpu", seed=9, progress=False, tokenizer=tiny_base.tokenizer,
                   sample_prompts=prompts)
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name
    assert log.train_loss == plain_log.train_loss and plain_log.samples == {}
    # one greedy continuation per prompt per evaluation; the last is what the trained model writes
    assert {p: len(t) for p, t in log.samples.items()} == {p: 3 for p in prompts}
    assert [log.samples[p][-1] for p in prompts] == generate(watched, tiny_base.tokenizer, list(prompts),
                                                             max_new_tokens=16)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        pretrain(watched, train, val, cfg, device="cpu", progress=False, sample_prompts=prompts)
