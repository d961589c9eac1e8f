"""The traps that break real pretrained models, each on tiny random models of two
architectures built here and loaded the way a user's model is (`model.load_pretrained`):

* a Llama-style model whose pad token is its EOS (as SmolLM2's and Qwen2.5's are), with a
  chat template;
* a GPT-2-style model with neither a pad token nor a chat template.
"""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from embiggen.lm.generate import episode_logprobs, generate_ids, plain_generation, sample_episodes
from embiggen.lm.model import load_pretrained
from embiggen.lm.tokenizer import train_tokenizer

TEXTS = ["Alma lives in Brook. She works as a baker.", "What is 2 + 3? It is 5.", "Bruno keeps a cat."] * 20
INSTRUCTIONS = ["Where does Alma live?", "What is 2 + 3?", "Tell me about Bruno.", "Name a colour."]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """Llama-style, pad = EOS, with a chat template."""
    tok = train_tokenizer(TEXTS, vocab_size=300)
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=256,
                                         eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    path = tmp_path_factory.mktemp("llama-pad-eos")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """GPT-2-style: no pad token, no chat template."""
    tok = train_tokenizer(TEXTS, vocab_size=300)
    tok.pad_token = None
    tok.chat_template = None
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=512,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    path = tmp_path_factory.mktemp("gpt2-bare")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def with_penalties(model):
    """What some pretrained models ship in generation_config.json."""
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.min_new_tokens = 4
    model.generation_config.top_k = 5
    return model


def test_rollouts_are_scored_under_the_distribution_they_were_sampled_from(llama_dir):
    """PPO's log-prob of a sampled token equals the sampler's own log-prob, even when the
    model's generation_config sets a repetition penalty, a minimum length and top-k."""
    model, tok = load_pretrained(llama_dir)
    with_penalties(model)
    real, seen = model.generate, {}

    def spy(**kwargs):  # the sampler's own (processed) scores, kept beside the tokens
        out = real(**kwargs, output_scores=True, return_dict_in_generate=True)
        seen["scores"] = torch.stack(out.scores, dim=1)
        return out.sequences

    model.generate = spy
    torch.manual_seed(0)
    episodes = sample_episodes(model, tok, INSTRUCTIONS, max_new_tokens=8, temperature=0.7)
    sampler = torch.log_softmax(seen["scores"].float(), -1).gather(-1, episodes["responses"].unsqueeze(-1))[..., 0]
    ours = episode_logprobs(model, episodes, temperature=0.7)
    mask = episodes["mask"].bool()
    torch.testing.assert_close(ours[mask], sampler[mask], atol=1e-4, rtol=0)
    assert model.generation_config.repetition_penalty == 3.0  # the model's own config is given back


def test_greedy_answers_ignore_the_models_own_penalties(llama_dir):
    model, tok = load_pretrained(llama_dir)
    prompts = [f"Q: {x}\nA:" for x in INSTRUCTIONS]
    plain = generate_ids(model, tok, prompts, max_new_tokens=10)
    penalised = generate_ids(with_penalties(model), tok, prompts, max_new_tokens=10)
    assert all(torch.equal(a, b) for a, b in zip(plain, penalised))
    with plain_generation(model):
        assert model.generation_config.repetition_penalty in (None, 1.0)
    assert model.generation_config.repetition_penalty == 3.0


def test_the_reward_is_read_at_the_eos_that_ended_the_answer_even_when_pad_is_eos(llama_dir):
    from embiggen.methods.reward import encode_exchange, left_pad, reward_model_from, rewards

    _, tok = load_pretrained(llama_dir)
    torch.manual_seed(0)
    rm = reward_model_from(llama_dir).eval()
    rm.config.pad_token_id = tok.pad_token_id  # as fit_reward_model sets it
    seqs = [encode_exchange(tok, "Where does Alma live?", "In Brook.", finished=True),
            encode_exchange(tok, "Tell me about Bruno.", "He keeps a cat and", finished=False)]
    assert seqs[0][-1] == tok.eos_token_id == tok.pad_token_id
    with torch.no_grad():
        got = rewards(rm, left_pad(tok, seqs))
        # written out: each sequence alone, unpadded, the scalar head on its very last hidden state
        want = [rm.score(rm.base_model(input_ids=torch.tensor([s])).last_hidden_state[0, -1]).item() for s in seqs]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_a_model_without_pad_token_or_chat_template_is_made_ready(gpt2_dir):
    with pytest.warns(UserWarning, match="no chat template"):
        model, tok = load_pretrained(gpt2_dir)
    assert tok.pad_token_id == tok.eos_token_id == model.config.pad_token_id == model.generation_config.pad_token_id
    from embiggen.lm.tokenizer import chat_prompt

    prompt = chat_prompt(tok, "Where does Alma live?")
    assert prompt == "User:\nWhere does Alma live?\n\nAssistant:\n"
    reply = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                                    tokenize=False)
    assert reply.endswith("Assistant:\nHello." + tok.eos_token + "\n")


@pytest.mark.parametrize("arch", ["llama, pad = EOS", "gpt2, no pad, no template"])
def test_the_whole_chain_runs_on_a_loaded_model(arch, llama_dir, gpt2_dir, tiny_splits, tmp_path):
    """Chat, SFT, a reward model, PPO, DPO, the evaluation and the widgets' model calls, a few
    steps each, on a model loaded from disk as a user's would be."""
    import copy
    import math
    import warnings

    from embiggen.methods.dpo import train_dpo
    from embiggen.judging.evaluate import judge_model
    from embiggen.lm.generate import chat_responses
    from embiggen.judging.labeler import Labeler
    from embiggen.methods.ppo import PPOTrainer, train_ppo
    from embiggen.judging.preferences import Comparison
    from embiggen.presets import DPOConfig, OptimConfig, PPOConfig, RewardConfig, SFTConfig
    from embiggen.methods.reward import fit_reward_model
    from embiggen.methods.sft import sft

    path = llama_dir if arch.startswith("llama") else gpt2_dir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the GPT-2 model's missing chat template (tested above)
        model, tok = load_pretrained(path)
    texts, finished = chat_responses(model, tok, INSTRUCTIONS, max_new_tokens=6)
    assert len(texts) == len(finished) == len(INSTRUCTIONS)

    examples = tiny_splits.sft_train()[:24]
    log = sft(model, tok, examples[:16], examples[16:], device="cpu", progress=False,
              cfg=SFTConfig(steps=3, batch_size=4, eval_every=3, max_length=64, replay_share=0.0))
    assert len(log.train_loss) == 3 and all(math.isfinite(x) for x in log.train_loss + log.val_loss)
    model.save_pretrained(tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")

    prompts = tiny_splits.ppo_eval[:8]
    pairs = [Comparison(e.instruction, e.answer or "I do not know.", "Sure, here it is", e.cluster, "x", 1.0,
                        True, False) for e in prompts]
    norm = [{"instruction": p.prompt, "samples": [p.chosen, p.rejected], "finished": [True, False]} for p in pairs]
    rm = fit_reward_model(tmp_path / "sft", tok, pairs, pairs[:4], norm, RewardConfig(steps=2, batch_size=4,
                          eval_every=2), tmp_path / "rm", device="cpu", progress=False)
    scores = rm.score([p.prompt for p in pairs], [p.chosen for p in pairs])  # a batch of 8: needs the pad token
    assert scores.shape == (8,) and torch.isfinite(scores).all()

    trainer = PPOTrainer(copy.deepcopy(model), model, tok, rm, Labeler(), device="cpu",
                         cfg=PPOConfig(batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6, ptx_coef=0.0))
    rows = train_ppo(trainer, prompts, steps=2, batch_size=4, progress=False).rows
    assert len(rows) == 2 and all(math.isfinite(r["value_loss"]) for r in rows)

    dpo_log = train_dpo(copy.deepcopy(model), model, tok, pairs, pairs[:2], device="cpu", progress=False,
                        cfg=DPOConfig(steps=2, batch_size=2, eval_every=2, max_length=64,
                                      optim=OptimConfig(lr=1e-3, warmup_steps=0)))
    assert all(math.isfinite(x) for x in dpo_log.train_loss)

    judged = judge_model(model, tok, prompts, Labeler(), rm, max_new_tokens=6)
    assert len(judged["rows"]) == len(prompts) and math.isfinite(judged["rm_score"])

    # what the notebooks' widgets ask of a model
    from embiggen.lm.generate import next_token_distribution
    from embiggen.notebook.widgets import compare_answers, inspect_reward, judged_answers, sample_grid

    assert len(next_token_distribution(model, tok, "Alma lives in", k=5)) == 5
    grid = sample_grid(model, tok, "Alma lives in", n=2, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=4)
    assert len(grid) == 2
    compared = compare_answers({"sft": (model, tok)}, "Where does Alma live?", max_new_tokens=4)
    assert [r["model"] for r in compared] == ["sft"]
    rows = judged_answers({"sft": (model, tok)}, prompts[0], Labeler(), rm, max_new_tokens=4,
                          best_of=("sft", model, tok, 2))
    assert len(rows) == 2 and all(math.isfinite(r["rm_score"]) for r in rows)
    assert math.isfinite(inspect_reward(rm, Labeler(), prompts[0], "In Brook.")["rm_score"])


@pytest.mark.parametrize("template_has_bos", [False, True])
def test_bos_leads_every_sequence_once_where_the_tokenizer_adds_one(template_has_bos, tmp_path):
    """A Llama-style tokenizer puts BOS in front of every text; our sequences (generation, SFT
    examples, reward-model exchanges) start with exactly one BOS, whether or not the chat
    template writes it. The embedded tokenizer, which adds none, gets none."""
    from tokenizers import processors

    from embiggen.lm.generate import sample_episodes
    from embiggen.methods.reward import encode_exchange
    from embiggen.methods.sft import encode_example
    from embiggen.lm.tokenizer import CHAT_TEMPLATE, adds_bos, encode

    tok = train_tokenizer(TEXTS, vocab_size=300)
    plain = encode(tok, "Alma lives")
    assert not adds_bos(tok) and plain == tok("Alma lives", add_special_tokens=False)["input_ids"]
    tok.add_special_tokens({"bos_token": "<s>"})
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[
        ("<s>", tok.bos_token_id)])
    tok.chat_template = ("{{ bos_token }}" if template_has_bos else "") + CHAT_TEMPLATE
    tok.save_pretrained(tmp_path)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(tmp_path)
    model, tok = load_pretrained(tmp_path)
    bos = tok.bos_token_id
    assert adds_bos(tok) and encode(tok, "Alma lives") == [bos] + plain

    def starts_with_one_bos(ids):
        ids = [int(i) for i in ids if int(i) != tok.pad_token_id]
        return ids[0] == bos and bos not in ids[1:]

    assert starts_with_one_bos(encode_example(tok, "Where does Alma live?", "In Brook.")["input_ids"])
    assert starts_with_one_bos(encode_exchange(tok, "Where does Alma live?", "In Brook."))
    episodes = sample_episodes(model, tok, INSTRUCTIONS, max_new_tokens=4, temperature=1.0)
    assert all(starts_with_one_bos(row[: episodes["prompt_len"]]) for row in episodes["sequences"])


def test_embiggen_run_starts_the_chain_from_a_pretrained_model(llama_dir, gpt2_dir, tiny_preset, cache_dir, tmp_path):
    """`embiggen run --base PATH` (here `run(get_preset(preset, PATH))`): no pretraining; every stage starts from the
    given model, and the cache keys carry a hash of its weights."""
    from dataclasses import replace

    from embiggen.chain import train_or_load_base
    from embiggen.pipeline import run
    from embiggen.report import report_card
    from embiggen.presets import get_preset

    preset = replace(tiny_preset, sft=replace(tiny_preset.sft, steps=4, optim=replace(tiny_preset.sft.optim, lr=1e-4)))
    report = run(get_preset(preset, str(llama_dir)), out=tmp_path, progress=False)
    assert report["base_model"] == str(llama_dir) and report["base"]["train_seconds"] is None \
        and report["base"]["trained"].startswith("no: the pretrained model")
    assert report["base"]["cache"] == str(llama_dir.resolve())
    assert {"sft", "rm", "ppo", "dpo"} <= set(report) and 0 <= report["dpo"]["win_rate_vs_sft"] <= 1
    assert f"base model {llama_dir}" in report_card(report)
    llama = train_or_load_base(get_preset(preset, str(llama_dir)), device="cpu")
    gpt2 = train_or_load_base(get_preset(preset, str(gpt2_dir)), device="cpu")
    assert llama.path.name != gpt2.path.name and llama.path.name.startswith("smoke-seed")
    # a report of the embedded chain is not extended with a pretrained model's figures, nor the other way
    again = run(preset, stages="base", out=tmp_path, progress=False)
    assert "sft" not in again and again["base_model"] == ""


# ---------------------------------------------------------------------------------------
# The memory knobs a larger model needs (OptimConfig): accumulation and checkpointing
# ---------------------------------------------------------------------------------------
def _one_run(model, batches, accumulation_steps=1, gradient_checkpointing=False, bf16=False, steps=2):
    """train_loop on `batches` in order, with a plain mean-squared loss written out."""
    from types import SimpleNamespace

    from embiggen.presets import OptimConfig
    from embiggen.lm.training import train_loop

    queue = iter(batches)
    cfg = SimpleNamespace(steps=steps, eval_every=steps, optim=OptimConfig(
        lr=1e-2, warmup_steps=0, accumulation_steps=accumulation_steps, gradient_checkpointing=gradient_checkpointing,
        bf16=bf16))

    def loss_fn(m, batch):
        out = m(input_ids=batch["input_ids"], use_cache=False).logits
        loss = (out.float() ** 2).mean()
        return loss, batch["input_ids"].numel(), {"half": loss.item() / 2}

    return train_loop(model, lambda generator: next(queue), loss_fn, cfg, device="cpu", progress=False)


def test_accumulated_gradients_equal_one_big_batch(llama_dir):
    """Two steps of 8 rows each, in one piece or as two accumulated pieces of 4: the same
    weights and the same logged losses (a mean over the rows, here of equal-sized pieces)."""
    model, _ = load_pretrained(llama_dir)
    torch.manual_seed(0)
    rows = [torch.randint(0, 100, (8, 12)) for _ in range(2)]
    whole, pieces = copy_of(model), copy_of(model)
    log_whole = _one_run(whole, [{"input_ids": r} for r in rows])
    log_pieces = _one_run(pieces, [{"input_ids": half} for r in rows for half in (r[:4], r[4:])], accumulation_steps=2)
    for a, b in zip(whole.parameters(), pieces.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert log_whole.train_loss == pytest.approx(log_pieces.train_loss, rel=1e-5)
    assert log_whole.metrics["half"] == pytest.approx(log_pieces.metrics["half"], rel=1e-5)
    assert log_whole.tokens == log_pieces.tokens == 2 * 8 * 12


def test_gradient_checkpointing_changes_memory_not_the_result(llama_dir):
    model, _ = load_pretrained(llama_dir)
    torch.manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 100, (4, 12))} for _ in range(2)]
    plain, checkpointed = copy_of(model), copy_of(model)
    _one_run(plain, batches)
    _one_run(checkpointed, batches, gradient_checkpointing=True, bf16=True)  # bf16: CUDA only, ignored on the CPU
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not checkpointed.is_activation_checkpointing  # switched off again for generation


def copy_of(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("path", ["llama", "gpt2"])
def test_chunked_log_probs_equal_the_full_ones_with_their_gradients(path, llama_dir, gpt2_dir, tiny_splits):
    """SFT's loss (with its replay parts) and DPO's answer log-probs from `logprob_chunk`
    positions at a time: the same values and the same gradients as from all logits at once."""
    import warnings

    from embiggen.methods.dpo import DPOData, encode_pairs, sequence_logprobs
    from embiggen.judging.preferences import Comparison
    from embiggen.methods.sft import batch_loss, encode_example, pad_batch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, tok = load_pretrained(llama_dir if path == "llama" else gpt2_dir)
    examples = tiny_splits.sft_train()[:6]
    batch = pad_batch([encode_example(tok, e.instruction, e.answer, 64) for e in examples], tok.pad_token_id)
    batch["replay"] = torch.tensor([False, False, False, False, True, True])
    results = []
    for chunk in (0, 7):
        model.zero_grad()
        loss, n, parts = batch_loss(model, batch, logprob_chunk=chunk)
        loss.backward()
        results.append((loss.item(), int(n), parts, [p.grad.clone() for p in model.parameters()]))
    (full, n_full, parts_full, g_full), (chunked, n_chunked, parts_chunked, g_chunked) = results
    assert chunked == pytest.approx(full, rel=1e-5) and n_full == n_chunked
    assert parts_chunked == pytest.approx(parts_full, rel=1e-5)
    for a, b in zip(g_full, g_chunked):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)

    pairs = [Comparison(e.instruction, e.answer, "Sure.", e.cluster, "x", 1.0) for e in examples]
    packed = DPOData(encode_pairs(tok, pairs, 64), torch.zeros(6, 2), tok.pad_token_id, pack_length=64,
                     share_prompt=True).batch(list(range(6)))
    with torch.no_grad():
        (lp_full, _), (lp_chunked, _) = (sequence_logprobs(model, packed, chunk) for chunk in (0, 5))
    torch.testing.assert_close(lp_chunked, lp_full, atol=1e-4, rtol=1e-5)


def test_ppo_with_activation_checkpointing_takes_the_same_steps(llama_dir, tiny_splits):
    import copy

    from embiggen.judging.labeler import Labeler
    from embiggen.methods.ppo import PPOTrainer, train_ppo
    from embiggen.presets import OptimConfig, PPOConfig

    class LengthReward:
        def score(self, instructions, responses, finished=None):
            return torch.tensor([len(r) / 10 for r in responses])

    model, tok = load_pretrained(llama_dir)
    prompts = tiny_splits.ppo_eval[:4]
    policies = []
    for checkpointing in (False, True):
        cfg = PPOConfig(batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6, ptx_coef=0.0,
                        optim=OptimConfig(lr=1e-3, warmup_steps=0, gradient_checkpointing=checkpointing, bf16=True))
        lm, enabled = copy.deepcopy(model), []
        enable = lm.activation_checkpointing_enable
        lm.activation_checkpointing_enable = lambda *args, **kwargs: enabled.append(1) or enable(*args, **kwargs)
        trainer = PPOTrainer(lm, model, tok, LengthReward(), Labeler(), cfg, device="cpu", seed=0)
        train_ppo(trainer, prompts, steps=2, batch_size=4, progress=False)
        assert len(enabled) == (2 if checkpointing else 0)  # on for each step's updates ...
        assert not trainer.policy.lm.is_activation_checkpointing  # ... and off again, for the next rollout
        policies.append(trainer.policy)
    for a, b in zip(*(p.parameters() for p in policies)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="minibatch_size"):
        PPOTrainer(copy.deepcopy(model), model, tok, LengthReward(), Labeler(), device="cpu",
                   cfg=PPOConfig(ptx_coef=0.0, optim=OptimConfig(accumulation_steps=2)))


@pytest.mark.parametrize("path", ["llama", "gpt2"])
def test_ppo_log_probs_entropies_and_values_in_chunks_equal_the_full_ones(path, llama_dir, gpt2_dir, monkeypatch):
    """PPO's policy pass with `logprob_chunk`: log-probs, entropies and values equal those from
    all logits at once, and so do the gradients of a loss on all three; the reference model's
    log-probs (`episode_logprobs`) likewise, chunked by hand and automatically past MAX_LOGITS."""
    import warnings

    from embiggen.lm import generate
    from embiggen.methods.ppo import PolicyWithValueHead

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, tok = load_pretrained(llama_dir if path == "llama" else gpt2_dir)
    torch.manual_seed(0)
    ep = sample_episodes(model, tok, INSTRUCTIONS, max_new_tokens=8, temperature=0.8)
    policy = PolicyWithValueHead(model)
    torch.nn.init.normal_(policy.value_head.weight)  # not the zeros it starts from: values that differ
    results = []
    for chunk in (0, 5):
        policy.zero_grad()
        lp, ent, values = policy.logprobs_and_values(ep["sequences"], ep["attention_mask"], ep["position_ids"],
                                                     ep["responses"], 0.8, chunk)
        ((lp - 0.1 * ent) * ep["mask"] + values ** 2).sum().backward()
        results.append((lp.detach(), ent.detach(), values.detach(), [p.grad.clone() for p in policy.parameters()]))
    (lp0, ent0, v0, g0), (lp1, ent1, v1, g1) = results
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v1, v0, atol=1e-5, rtol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(episode_logprobs(model, ep, 0.8), lp0)  # small enough: all logits at once
    torch.testing.assert_close(episode_logprobs(model, ep, 0.8, chunk=3), lp0, atol=1e-5, rtol=1e-5)
    calls = []
    monkeypatch.setattr(generate, "chunked_response_logprobs",
                        lambda *args: calls.append(args[-1]) or generate.__dict__["response_logprobs"](
                            args[0](args[1]), args[2], args[3]))
    monkeypatch.setattr(generate, "MAX_LOGITS", ep["responses"].numel() * len(tok) - 1)
    torch.testing.assert_close(episode_logprobs(model, ep, 0.8), lp0, atol=1e-5, rtol=1e-5)
    assert calls and 0 < calls[0] < ep["responses"].numel()  # chunked, once the logits would pass the cap


def test_ppo_with_chunked_log_probs_takes_the_same_steps(llama_dir, tiny_splits):
    import copy

    from embiggen.judging.labeler import Labeler
    from embiggen.methods.ppo import PPOTrainer, train_ppo
    from embiggen.presets import OptimConfig, PPOConfig

    class LengthReward:
        def score(self, instructions, responses, finished=None):
            return torch.tensor([len(r) / 10 for r in responses])

    model, tok = load_pretrained(llama_dir)
    policies, logs = [], []
    for chunk in (0, 4):
        cfg = PPOConfig(batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6, ptx_coef=0.0,
                        logprob_chunk=chunk, optim=OptimConfig(lr=1e-3, warmup_steps=0))
        trainer = PPOTrainer(copy.deepcopy(model), model, tok, LengthReward(), Labeler(), cfg, device="cpu", seed=0)
        logs.append(train_ppo(trainer, tiny_splits.ppo_eval[:4], steps=2, batch_size=4, progress=False))
        policies.append(trainer.policy)
    for a, b in zip(*(p.parameters() for p in policies)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert logs[0].series("kl") == pytest.approx(logs[1].series("kl"), abs=1e-5)


def test_a_preset_longer_than_the_models_context_is_refused_by_name(gpt2_dir, tiny_preset, cache_dir):
    """GPT-2's learned positions would fail deep inside a stage: loading the base refuses first,
    naming each setting that is too long (this GPT-2 reads 512 tokens)."""
    from dataclasses import replace

    from embiggen.chain import train_or_load_base
    from embiggen.lm.model import check_context, context_length
    from embiggen.presets import get_preset

    preset = get_preset(replace(tiny_preset, sft=replace(tiny_preset.sft, max_length=600),
                                dpo=replace(tiny_preset.dpo, max_length=513)), str(gpt2_dir))
    with pytest.raises(ValueError, match=r"at most 512 tokens.*sft\.max_length=600, dpo\.max_length=513"):
        train_or_load_base(preset, device="cpu")
    model, _ = load_pretrained(gpt2_dir)
    assert context_length(model) == 512
    check_context(model, {"sft.max_length": 512})  # exactly the context is fine


def test_a_notebook_started_from_another_model_says_its_prose_describes_the_embedded_run(llama_dir, capsys,
                                                                                          monkeypatch):
    from embiggen.notebook.session import setup

    monkeypatch.setenv("EMBIGGEN_THREADS", "1")
    assert setup("smoke", base=str(llama_dir)).base_model == str(llama_dir)
    out = capsys.readouterr().out
    assert f"base model {llama_dir}" in out and "describes the committed run" in out
    setup("smoke", base="")
    assert "describes the committed run" not in capsys.readouterr().out
