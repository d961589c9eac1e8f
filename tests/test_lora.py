"""LoRA (embiggen.lm.lora) on tiny Llama- and GPT-2-architecture models built here: the
adapted layer against its equation written out, merging, the reference with adapters off, and
every fine-tuning stage (SFT, reward model, PPO, DPO, GRPO) training adapters only."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from embiggen.lm.generate import episode_logprobs, sample_episodes
from embiggen.lm.model import load_pretrained
from embiggen.lm.tokenizer import train_tokenizer
from embiggen.lm.training import TrainLog, load_checkpoint, save_checkpoint
from embiggen.lm.lora import (adapter_layers, adapters_disabled, add_adapters, has_adapters, merge_adapters,
                                   trainable_parameters)
from embiggen.presets import DPOConfig, GRPOConfig, LoRAConfig, OptimConfig, PPOConfig, SFTConfig

TEXTS = ["Alma lives in Brook. She works as a baker.", "What is 2 + 3? It is 5.", "Bruno keeps a cat."] * 20
LORA = LoRAConfig(rank=4, alpha=8.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch: str, path):
    tok = train_tokenizer(TEXTS, vocab_size=300)
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=256,
                                             eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=256,
                                           eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return load_pretrained(path)


@pytest.fixture(params=["llama", "gpt2"])
def model_and_tok(request, tmp_path):
    return tiny(request.param, tmp_path / request.param)


def randomise_adapters(model, seed=1):
    """B starts at zero (the adapted model is the base model); give A and B values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_an_adapted_layer_computes_w0_x_plus_alpha_over_r_b_a_x():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32))
    w0 = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    add_adapters(model, LORA)
    randomise_adapters(model)
    layer = model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(3, 16)
    expected = x @ w0.T + (LORA.alpha / LORA.rank) * (x @ a.T @ b.T)  # h = W0 x + (alpha / r) B A x
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    merge_adapters(model)
    merged = model.model.layers[0].self_attn.q_proj
    assert type(merged) is torch.nn.Linear  # an ordinary layer again
    torch.testing.assert_close(merged.weight, w0 + (LORA.alpha / LORA.rank) * b @ a, atol=1e-6, rtol=1e-5)


def test_adapters_start_at_the_base_model_train_alone_and_switch_off(model_and_tok):
    model, _ = model_and_tok
    base = copy.deepcopy(model)
    ids = torch.randint(0, 300, (2, 9))
    add_adapters(model, LORA)
    assert has_adapters(model) and adapter_layers(model)
    torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits)  # B = 0
    trainable, total = trainable_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names) and trainable < 0.5 * total
    randomise_adapters(model)
    adapted = model(input_ids=ids).logits
    assert (adapted - base(input_ids=ids).logits).abs().max() > 1e-3
    with adapters_disabled(model):
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # trainable again after
    torch.testing.assert_close(model(input_ids=ids).logits, adapted)
    merge_adapters(model)
    assert not has_adapters(model)
    torch.testing.assert_close(model(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_a_target_that_matches_no_layer_is_refused():
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32))
    with pytest.raises(ValueError):
        add_adapters(model, LoRAConfig(rank=4, target_modules=("no_such_layer",)))
    with pytest.raises(ValueError, match="rank"):
        add_adapters(model, LoRAConfig(rank=0))


def test_sft_with_lora_trains_adapters_saves_them_and_a_merged_model(model_and_tok, tiny_splits, tmp_path):
    from embiggen.methods.sft import sft

    model, tok = model_and_tok
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = SFTConfig(steps=6, batch_size=4, max_length=64, eval_every=6, n_train=0, n_val=0, replay_share=0.0,
                    optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0, lora=LORA))
    log = sft(model, tok, tiny_splits.sft_train()[:16], tiny_splits.sft_val()[:4], cfg, device="cpu", progress=False)
    assert log.train_loss[-1] < log.train_loss[0]
    for name, p in model.named_parameters():  # the pretrained weights never moved
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            torch.testing.assert_close(p, before[key], atol=0, rtol=0)
    ids = torch.randint(0, 300, (2, 9))
    adapted = model(input_ids=ids).logits.detach()
    save_checkpoint(tmp_path / "ckpt", model, tok, {"stage": "sft"}, log)
    assert not has_adapters(model)  # merged in place: the stage returns an ordinary model
    adapter = load_file(tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    assert (tmp_path / "ckpt" / "adapter" / "adapter_config.json").exists()
    loaded, *_ = load_checkpoint(tmp_path / "ckpt")
    torch.testing.assert_close(loaded(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)
    assert not any("lora_" in k for k, _ in loaded.named_parameters())


def test_a_reward_model_with_lora_trains_its_new_score_head_in_full(tmp_path):
    _, tok = tiny("llama", tmp_path / "llama")
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "llama", num_labels=1)
    add_adapters(rm, LORA)
    assert type(rm.score) is torch.nn.Linear and rm.score.weight.requires_grad  # not wrapped: new, trained whole
    trunk = [n for n, p in rm.named_parameters() if p.requires_grad and not n.startswith("score")]
    assert trunk and all("lora_" in n for n in trunk)


class LengthReward:
    def score(self, instructions, responses, finished=None):
        return torch.tensor([len(r) / 10 for r in responses])


def test_ppo_with_lora_keeps_no_reference_copy_and_its_reference_is_the_start(model_and_tok, tiny_splits):
    from embiggen.judging.labeler import Labeler
    from embiggen.methods.ppo import PPOTrainer, train_ppo

    model, tok = model_and_tok
    cfg = PPOConfig(batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6, ptx_coef=0.0,
                    optim=OptimConfig(lr=1e-2, warmup_steps=0, lora=LORA))
    trainer = PPOTrainer(copy.deepcopy(model), model, tok, LengthReward(), Labeler(), cfg, device="cpu", seed=0)
    assert trainer.ref_policy is None  # the reference is the policy with its adapters off
    train_ppo(trainer, tiny_splits.ppo_eval[:4], steps=2, batch_size=4, progress=False)
    ep = sample_episodes(trainer.policy.lm, tok, ["Where does Alma live?", "What is 2 + 3?"], 6, 1.0)
    start = episode_logprobs(model, ep, 1.0)
    torch.testing.assert_close(trainer.reference_logprobs(ep), start, atol=1e-5, rtol=1e-5)
    assert (episode_logprobs(trainer.policy.lm, ep, 1.0) - start).abs().max() > 1e-4  # the adapters moved
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    names = [n for n, p in trainer.policy.named_parameters() if id(p) in optimised]
    assert names and all("lora_" in n or n.startswith("value_head") for n in names)


def test_dpo_with_lora_uses_the_policy_with_adapters_off_as_reference(model_and_tok, tiny_splits, dpo_reference_gaps):
    from embiggen.judging.preferences import Comparison
    from embiggen.methods import dpo

    model, tok = model_and_tok
    pairs = [Comparison(e.instruction, e.answer, "Sure.", e.cluster, "x", 1.0) for e in tiny_splits.sft_train()[:8]]
    gaps = dpo_reference_gaps
    cfg = DPOConfig(steps=3, batch_size=4, eval_every=3, max_length=64,
                    optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0, lora=LORA))
    policy = copy.deepcopy(model)
    log = dpo.train_dpo(policy, None, tok, pairs, pairs[:4], cfg, device="cpu", progress=False)
    assert gaps[0] <= 1e-4  # the reference is the start: log pi / pi_ref = 0 before the first step
    assert log.metrics["reward_margin"][-1] > log.metrics["reward_margin"][0]
    with pytest.raises(ValueError, match="ref_model=None needs LoRA"):
        dpo.train_dpo(copy.deepcopy(model), None, tok, pairs, pairs[:4], DPOConfig(steps=1, batch_size=4),
                      device="cpu", progress=False)


def test_grpo_with_lora_measures_its_kl_against_the_adapters_off(model_and_tok, tiny_splits):
    from embiggen.judging.verifiers import exact_reward
    from embiggen.methods.grpo import GRPOTrainer

    model, tok = model_and_tok
    cfg = GRPOConfig(steps=2, prompts_per_step=2, group_size=2, minibatch_size=4, max_new_tokens=6, kl_coef=0.05,
                     optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0, lora=LORA))
    trainer = GRPOTrainer(copy.deepcopy(model), tok, exact_reward, cfg, ref_lm=model, device="cpu", seed=0)
    assert trainer.ref_policy is None and trainer.has_reference
    row = trainer.step(tiny_splits.ppo_eval[:2])
    assert row["kl"] == pytest.approx(0.0, abs=1e-5)  # the first batch is sampled from the start itself
    ep = sample_episodes(trainer.policy, tok, ["What is 2 + 3?"], 6, 1.0)
    torch.testing.assert_close(trainer.reference_logprobs(ep), episode_logprobs(model, ep, 1.0), atol=1e-5,
                               rtol=1e-5)


def test_every_stage_of_the_chain_trains_adapters_from_a_pretrained_model(tiny_preset, cache_dir, tmp_path):
    """`embiggen run --base PATH` on a preset with LoRA everywhere (`presets.with_lora`): each
    fine-tuned stage's cache entry holds its adapter beside its merged weights, and loads as an
    ordinary model."""
    from dataclasses import replace

    from embiggen.pipeline import run
    from embiggen.presets import get_preset, with_lora

    tiny("llama", tmp_path / "base")
    preset = with_lora(replace(tiny_preset, sft=replace(tiny_preset.sft, steps=4)), "smoke", LORA, lr_scale=10.0)
    report = run(get_preset(preset, str(tmp_path / "base")), out=tmp_path / "out", progress=False)
    assert {"sft", "rm", "ppo", "dpo", "grpo"} <= set(report)
    adapters = sorted(p.parent.parent.parent.name for p in cache_dir.glob("*/*/adapter/adapter_model.safetensors"))
    assert {"sft", "reward", "ppo", "dpo", "grpo"} <= set(adapters)
    for entry in cache_dir.glob("*/*/adapter"):
        names = load_file(entry / "adapter_model.safetensors")
        assert names and all("lora_" in k or k.startswith(("score.", "value_head.")) for k in names)
        merged = load_file(entry.parent / "model.safetensors")
        assert merged and not any("lora_" in k or "base_layer" in k for k in merged)  # an ordinary checkpoint
