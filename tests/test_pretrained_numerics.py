"""The pretrained path's numbers, on tiny random models of the architectures that break them,
built and saved here:

* a checkpoint stored in bf16 (as most hub models are) loads, trains and scores in float32;
* the chunked log-prob paths apply the model's own logit transform (Granite's scaling,
  Cohere's scale, Gemma 2/3's soft-capping), and refuse a transform they do not know;
* PPO's first minibatch sees a ratio of exactly 1 under bf16 autocast, and with dropout in the
  model's config; DPO's implicit reward starts at 0 likewise.
"""

import copy

import pytest
import torch
from transformers import (CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM,
                          Gemma3TextConfig, GraniteConfig, GraniteForCausalLM, LlamaConfig, LlamaForCausalLM)

from embiggen.lm import training
from embiggen.lm.generate import answer_logprobs, output_head, response_logprobs
from embiggen.lm.model import load_pretrained
from embiggen.lm.training import load_checkpoint, make_optimizer, save_checkpoint, TrainLog
from embiggen.methods.ppo import PolicyWithValueHead
from embiggen.methods.reward import reward_model_from
from embiggen.methods.sft import chunked_token_nll
from embiggen.presets import OptimConfig, get_preset

SMALL = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=128)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory, save_tiny_model):
    """A Llama-style checkpoint whose weights are stored in bf16."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMALL)).to(torch.bfloat16)
    return save_tiny_model(tmp_path_factory.mktemp("llama-bf16"), model)


# ---------------------------------------------------------------------------------------
# float32 master weights
# ---------------------------------------------------------------------------------------
def share_changed_by_one_step(model) -> float:
    """The share of weights one AdamW step (a plain loss, the `pretrained` preset's PPO rate) moves."""
    optim = get_preset("pretrained").ppo.optim
    params = [p for p in model.parameters()]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                  weight_decay=optim.weight_decay)
    ids = torch.randperm(300, generator=torch.Generator().manual_seed(0)).view(3, 100)  # every token: every row moves
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    changed = sum((p.detach() != b).sum().item() for p, b in zip(params, before))
    return changed / sum(p.numel() for p in params)


def test_a_bf16_checkpoint_loads_as_float32_and_one_small_step_changes_most_weights(bf16_dir):
    model, _ = load_pretrained(bf16_dir)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert share_changed_by_one_step(model) >= 0.8
    # what the checkpoint's own dtype would have done: most of the update rounds away
    pure, _ = load_pretrained(bf16_dir, dtype=torch.bfloat16)
    assert share_changed_by_one_step(pure) < 0.2


def test_reward_model_and_checkpoints_from_bf16_folders_are_float32(bf16_dir, tmp_path):
    rm = reward_model_from(bf16_dir)
    assert {p.dtype for p in rm.parameters()} == {torch.float32}
    model, tok = load_pretrained(bf16_dir, dtype=torch.bfloat16)
    save_checkpoint(tmp_path / "ckpt", model, tok, {"note": "saved in bf16"}, TrainLog())
    loaded, _, info, _ = load_checkpoint(tmp_path / "ckpt")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32} and info["note"] == "saved in bf16"


def test_the_value_head_runs_on_a_loaded_bf16_checkpoint(bf16_dir):
    model, _ = load_pretrained(bf16_dir)
    policy = PolicyWithValueHead(model)
    ids = torch.randint(0, 300, (2, 10))
    logits, values = policy(ids, torch.ones_like(ids), torch.arange(10)[None].expand(2, -1), 4)
    assert logits.shape == (2, 4, 300) and values.shape == (2, 4)


def test_training_bf16_weights_is_refused_in_one_line(bf16_dir):
    pure, _ = load_pretrained(bf16_dir, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="float32 master weights"):
        make_optimizer(pure.parameters(), OptimConfig())
    frozen = [p.requires_grad_(False) for p in pure.parameters()]  # frozen weights (as under LoRA) may be bf16
    assert make_optimizer(frozen + [torch.nn.Parameter(torch.zeros(3))], OptimConfig()).param_groups[0]["params"]


# ---------------------------------------------------------------------------------------
# The chunked paths use the model's own logits
# ---------------------------------------------------------------------------------------
ARCHITECTURES = {
    "granite": lambda: GraniteForCausalLM(GraniteConfig(**SMALL, logits_scaling=8.0)),
    "cohere": lambda: CohereForCausalLM(CohereConfig(**SMALL, logit_scale=0.25)),
    "gemma2": lambda: Gemma2ForCausalLM(Gemma2Config(**SMALL, head_dim=16, final_logit_softcapping=0.02)),
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(**SMALL, head_dim=16, final_logit_softcapping=0.02)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL)),
}


def episodes(n_prompt=6, n_response=5, batch=3):
    ids = torch.randint(0, 300, (batch, n_prompt + n_response), generator=torch.Generator().manual_seed(1))
    return {"sequences": ids, "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(ids.shape[1])[None].expand(batch, -1), "responses": ids[:, n_prompt:]}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_chunked_log_probs_equal_the_models_own_on_architectures_that_transform_logits(arch):
    torch.manual_seed(0)
    model = ARCHITECTURES[arch]().eval()
    ep = episodes()
    with torch.no_grad():
        full, full_entropy = answer_logprobs(model, ep, 0.7, chunk=0)
        chunked, chunked_entropy = answer_logprobs(model, ep, 0.7, chunk=4)
        policy = PolicyWithValueHead(model)
        via_policy = policy.logprobs_and_values(ep["sequences"], ep["attention_mask"], ep["position_ids"],
                                                ep["responses"], 0.7, chunk=4)[0]
        labels = ep["sequences"].clone()
        inputs = {"input_ids": ep["sequences"], "attention_mask": ep["attention_mask"]}
        nll = chunked_token_nll(model, inputs, labels, 5)
        logits = model(**inputs).logits[:, :-1]
        own_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="none")
    assert (chunked - full).abs().max().item() <= 1e-5
    assert (chunked_entropy - full_entropy).abs().max().item() <= 1e-5
    assert (via_policy - full).abs().max().item() <= 1e-5
    assert (nll - own_nll).abs().max().item() <= 1e-5
    if arch != "llama":  # the plain output embedding alone would be another distribution
        hidden = model.base_model(**inputs).last_hidden_state[:, 5:-1]
        plain, _ = response_logprobs(model.get_output_embeddings()(hidden), ep["responses"], 0.7)
        assert (plain - full).abs().max().item() > 1e-2


def test_a_logit_transform_the_chunked_path_does_not_know_is_refused_by_name():
    class Doubled(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    torch.manual_seed(0)
    model = Doubled(LlamaConfig(**SMALL))
    with pytest.raises(ValueError, match="Doubled.*logprob_chunk=0"):
        output_head(model)
    with pytest.raises(ValueError, match="logprob_chunk=0"):
        answer_logprobs(model, episodes(), 1.0, chunk=4)


# ---------------------------------------------------------------------------------------
# PPO's ratio and DPO's margin start where they should
# ---------------------------------------------------------------------------------------
class LengthReward:
    def score(self, instructions, responses, finished=None):
        return torch.tensor([len(r) / 10 for r in responses])


def first_minibatch_ratios(model, tok, prompts, monkeypatch, bf16: bool) -> tuple[torch.Tensor, float]:
    """PPO's ratio pi / pi_old on the response tokens of the first minibatch, and its clip fraction."""
    from embiggen.judging.labeler import Labeler
    from embiggen.methods import ppo
    from embiggen.presets import PPOConfig

    seen = []
    original = ppo.clipped_policy_loss

    def recording(logprobs, old, advantages, mask, cliprange):
        loss, stats = original(logprobs, old, advantages, mask, cliprange)
        seen.append((torch.exp(logprobs - old).detach()[mask.bool()], stats["clip_frac"]))
        return loss, stats

    monkeypatch.setattr(ppo, "clipped_policy_loss", recording)
    passes = []  # whether each pass of the policy (the rollout's, then the update's) ran under autocast
    forward = ppo.PolicyWithValueHead.logprobs_and_values
    monkeypatch.setattr(ppo.PolicyWithValueHead, "logprobs_and_values",
                        lambda self, *a, **k: passes.append(torch.is_autocast_enabled("cpu")) or forward(self, *a, **k))
    cfg = PPOConfig(batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6, ptx_coef=0.0,
                    optim=OptimConfig(lr=1e-3, warmup_steps=0, bf16=bf16))
    trainer = ppo.PPOTrainer(copy.deepcopy(model), copy.deepcopy(model), tok, LengthReward(), Labeler(), cfg,
                             device="cpu", seed=0)
    trainer.step(prompts)
    assert len(passes) == 3 and len(set(passes)) == 1 and passes[0] == bf16  # one rollout, two minibatches
    return seen[0]


def test_ppo_first_minibatch_ratio_is_one_under_bf16_autocast(tmp_path, tiny_splits, monkeypatch, save_tiny_model):
    monkeypatch.setattr(training, "BF16_DEVICES", ("cuda", "cpu"))  # CPU autocast runs the same code here
    torch.manual_seed(0)
    model, tok = load_pretrained(save_tiny_model(tmp_path / "m", LlamaForCausalLM(LlamaConfig(**SMALL))))
    ratios, clip_frac = first_minibatch_ratios(model, tok, tiny_splits.ppo_eval[:4], monkeypatch, bf16=True)
    assert ratios.numel() > 0
    assert (ratios - 1).abs().max().item() <= 1e-6 and clip_frac == 0.0
    with training.mixed_precision(OptimConfig(bf16=True), "cpu"):  # and autocast did run: bf16 matmuls
        assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16


def test_ppo_first_minibatch_ratio_is_one_with_dropout_in_the_config(tmp_path, tiny_splits, monkeypatch, save_tiny_model):
    """Llama copies `attention_dropout` into its attention modules: changing the config alone
    leaves it on in the update's training mode."""
    torch.manual_seed(0)
    config = LlamaConfig(**SMALL, attention_dropout=0.5)
    model, tok = load_pretrained(save_tiny_model(tmp_path / "m", LlamaForCausalLM(config)))
    ratios, clip_frac = first_minibatch_ratios(model, tok, tiny_splits.ppo_eval[:4], monkeypatch, bf16=False)
    assert (ratios - 1).abs().max().item() <= 1e-6 and clip_frac == 0.0


def test_dpo_implicit_reward_starts_at_zero_with_dropout_in_the_config(tmp_path, tiny_splits, dpo_reference_gaps, save_tiny_model):
    """Before the first step the policy is the reference: log pi - log pi_ref = 0 on every answer
    of the first batch (up to packing's float noise), also when the config asks for dropout."""
    from embiggen.judging.preferences import Comparison
    from embiggen.methods import dpo
    from embiggen.presets import DPOConfig

    torch.manual_seed(0)
    config = LlamaConfig(**SMALL, attention_dropout=0.5)
    model, tok = load_pretrained(save_tiny_model(tmp_path / "m", LlamaForCausalLM(config)))
    examples = tiny_splits.sft_train()[:8]
    pairs = [Comparison(e.instruction, e.answer, "Sure.", e.cluster, "x", 1.0) for e in examples]
    gaps = dpo_reference_gaps
    cfg = DPOConfig(steps=1, batch_size=4, eval_every=1, max_length=64, optim=OptimConfig(lr=1e-5, warmup_steps=0))
    dpo.train_dpo(copy.deepcopy(model), copy.deepcopy(model), tok, pairs, pairs[:4], cfg, device="cpu",
                  progress=False)
    assert gaps and gaps[0] <= 1e-4
