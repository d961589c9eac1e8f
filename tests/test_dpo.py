"""DPO: the loss against its formula written out, whole-answer log-probabilities against a
plain loop, the encoding of unfinished answers, and training that moves the implicit reward."""
import copy
import math

import pytest
import torch

from embiggen.judging.preferences import Comparison
from embiggen.methods.dpo import (DPOData, dpo_loss, encode_pairs, encode_response, reference_logprobs,
                                  sequence_logprobs, train_dpo)
from embiggen.methods.sft import IGNORE_INDEX
from embiggen.presets import DPOConfig, OptimConfig


def test_dpo_loss_against_the_formula_written_out():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6) * 3 for _ in range(4))
    beta = 0.3
    loss, rewards = dpo_loss(pc, pr, rc, rr, beta)
    expected = 0.0
    for i in range(6):
        z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()
        expected += -math.log(1 / (1 + math.exp(-z)))
    assert loss.item() == pytest.approx(expected / 6, rel=1e-5)
    assert torch.allclose(rewards["chosen"], beta * (pc - rc)) and torch.allclose(rewards["rejected"], beta * (pr - rr))
    ipo, _ = dpo_loss(pc, pr, rc, rr, beta, loss_type="ipo")
    margins = [((pc[i] - rc[i]) - (pr[i] - rr[i])).item() for i in range(6)]
    assert ipo.item() == pytest.approx(sum((m - 1 / (2 * beta)) ** 2 for m in margins) / 6, rel=1e-5)
    with pytest.raises(ValueError, match="valid"):
        dpo_loss(pc, pr, rc, rr, beta, loss_type="hinge-ish")


def test_at_the_reference_the_loss_is_ln2():
    logp = torch.tensor([-5.0, -7.0])
    loss, _ = dpo_loss(logp, logp + 1, logp, logp + 1, beta=0.1)  # the policy is the reference: margin 0
    assert loss.item() == pytest.approx(math.log(2))


def _pairs(splits, n=12):
    prompts = [e for e in splits.preferences if e.cluster == "harmful"][:n]
    return [Comparison(e.instruction, "I cannot help with that.", "Sure. Do it when nobody is looking.", "harmful",
                       "refused vs complied", 2.0) for e in prompts]


def test_sequence_logprobs_sum_the_response_tokens_only(tiny_base, tiny_splits):
    tok, model = tiny_base.tokenizer, tiny_base.model
    pairs = _pairs(tiny_splits, 2)
    data = DPOData(encode_pairs(tok, pairs), torch.zeros(2, 2), tok.pad_token_id)
    batch = data.batch([0, 1])
    with torch.no_grad():
        logp, n = sequence_logprobs(model, batch)
        for row in range(4):  # a plain loop: one sequence at a time, no padding
            ids = [t for t, m in zip(batch["input_ids"][row].tolist(), batch["attention_mask"][row].tolist()) if m]
            labels = batch["labels"][row].tolist()[: len(ids)]
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            total, count = 0.0, 0
            for t in range(1, len(ids)):
                if labels[t] != IGNORE_INDEX:
                    total += torch.log_softmax(logits[t - 1].float(), -1)[labels[t]].item()
                    count += 1
            assert logp[row].item() == pytest.approx(total, rel=1e-4, abs=1e-4) and n[row].item() == count
    # rows are chosen 0, chosen 1, rejected 0, rejected 1; the pair's token counts are (chosen, rejected)
    assert batch["ref_tokens"].tolist() == [[n[0].item(), n[2].item()], [n[1].item(), n[3].item()]]


def test_an_unfinished_answer_gets_no_end_of_sequence_token(tiny_base):
    tok = tiny_base.tokenizer
    done = encode_response(tok, "Say hi.", "hi", finished=True)
    cut = encode_response(tok, "Say hi.", "hi", finished=False)
    assert done["input_ids"][-1] == tok.eos_token_id and cut["input_ids"] == done["input_ids"][:-1]


def test_training_raises_the_margin_and_leaves_the_reference_alone(tiny_base, tiny_splits):
    tok = tiny_base.tokenizer
    pairs = _pairs(tiny_splits)
    ref = tiny_base.model
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    policy = copy.deepcopy(ref)
    cfg = DPOConfig(steps=15, batch_size=4, eval_every=15, optim=OptimConfig(lr=3e-3, warmup_steps=0))
    log = train_dpo(policy, ref, tok, pairs, pairs[:4], cfg, device="cpu", progress=False)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in before.items())
    assert len(log.metrics["reward_margin"]) == 15 and len(log.metrics["val_reward_accuracy"]) == 1
    assert log.metrics["reward_margin"][-1] > 0 and log.val_loss[-1] < math.log(2)
    # the implicit reward, measured directly: the policy moved towards the chosen answers
    enc = encode_pairs(tok, pairs)
    ref_lp = reference_logprobs(ref, enc, tok.pad_token_id, "cpu")
    pol_lp = reference_logprobs(policy, enc, tok.pad_token_id, "cpu")
    margin = (pol_lp[:, 0] - ref_lp[:, 0]) - (pol_lp[:, 1] - ref_lp[:, 1])
    assert (margin > 0).float().mean().item() > 0.9


def test_demonstrations_add_their_sft_loss_like_ppo_ptx(tiny_base, tiny_splits):
    from dataclasses import replace

    from embiggen.presets import SFTConfig
    from embiggen.methods.sft import SFTData

    tok, pairs = tiny_base.tokenizer, _pairs(tiny_splits, 6)
    cfg = DPOConfig(steps=3, batch_size=2, eval_every=3, ptx_coef=1.0, optim=OptimConfig(lr=1e-3, warmup_steps=0))
    with pytest.raises(ValueError, match="ptx_data"):
        train_dpo(copy.deepcopy(tiny_base.model), tiny_base.model, tok, pairs, pairs[:2], cfg, device="cpu",
                  progress=False)
    demos = SFTData(tok, tiny_splits.ptx[:20], replace(SFTConfig(), batch_size=2, max_length=256, replay_share=0.0))
    log = train_dpo(copy.deepcopy(tiny_base.model), tiny_base.model, tok, pairs, pairs[:2], cfg, device="cpu",
                    progress=False, ptx_data=demos)
    assert len(log.metrics["ptx_loss"]) == 3 and all(x > 0 for x in log.metrics["ptx_loss"])
    # the step's loss is the DPO loss plus the demonstrations' loss: above the DPO loss alone (ln 2 at step 1)
    assert log.train_loss[0] == pytest.approx(math.log(2) + log.metrics["ptx_loss"][0], rel=1e-4)


def test_packed_batches_give_the_same_log_probs_as_padded_ones(tiny_base, tiny_splits):
    """Packing puts several sequences in a row with restarting positions, and sharing writes
    each pair's prompt once: each answer must get exactly the log-probability it gets alone
    in a padded row."""
    tok, model = tiny_base.tokenizer, tiny_base.model
    prompts = [e for e in tiny_splits.preferences][:6]
    pairs = [Comparison(e.instruction, e.answer or "I do not know.", "Sure.", e.cluster, "x", 1.0) for e in prompts]
    padded = DPOData(encode_pairs(tok, pairs), torch.zeros(6, 2), tok.pad_token_id)
    packed = DPOData(padded.encoded, torch.zeros(6, 2), tok.pad_token_id, pack_length=256)
    a, b = padded.batch(list(range(6))), packed.batch(list(range(6)))
    assert b["input_ids"].shape[0] < a["input_ids"].shape[0]  # fewer rows: several sequences share one
    with torch.no_grad():
        (lp_a, n_a), (lp_b, n_b) = sequence_logprobs(model, a), sequence_logprobs(model, b)
    torch.testing.assert_close(lp_b, lp_a, rtol=1e-4, atol=1e-4)
    assert n_a.tolist() == n_b.tolist()
    # each prompt written once, both answers after it: the same log-probs from fewer tokens
    shared = DPOData(padded.encoded, torch.zeros(6, 2), tok.pad_token_id, pack_length=256, share_prompt=True)
    c = shared.batch(list(range(6)))
    prompt_tokens = sum(label == IGNORE_INDEX for chosen, _ in padded.encoded for label in chosen["labels"])
    assert (c["input_ids"] != tok.pad_token_id).sum() == (b["input_ids"] != tok.pad_token_id).sum() - prompt_tokens + 6
    with torch.no_grad():
        lp_c, n_c = sequence_logprobs(model, c)
    torch.testing.assert_close(lp_c, lp_a, rtol=1e-4, atol=1e-4)
    assert n_c.tolist() == n_a.tolist()


def test_iterated_dpo_trains_each_round_on_the_previous_rounds_own_answers(tiny_preset, tiny_base, monkeypatch):
    """cfg.rounds = 2: round 2 starts from round 1's weights, trains on pairs of round 1's answers
    to the fresh `dpo_round` prompts, still against the SFT model; the rounds share the steps."""
    import embiggen.chain as chain
    from embiggen.judging.preferences import read_pairs
    from embiggen.data.splits import data_splits

    started = []  # (the policy's weights when train_dpo starts, the reference it is given, steps)
    real = chain.train_dpo

    def spy(model, ref_model, tokenizer, train_pairs, eval_pairs, cfg, **kwargs):
        started.append(({k: v.clone() for k, v in model.state_dict().items()}, ref_model, cfg.steps, train_pairs))
        return real(model, ref_model, tokenizer, train_pairs, eval_pairs, cfg, **kwargs)

    monkeypatch.setattr(chain, "train_dpo", spy)
    cfg = DPOConfig(steps=5, batch_size=4, eval_every=5, rounds=2, round_prompts=24,
                    optim=OptimConfig(lr=3e-3, warmup_steps=0))
    final = chain.train_or_load_dpo(tiny_preset, sft=tiny_base, cfg=cfg, progress=False, device="cpu")
    first = chain.train_or_load_dpo(tiny_preset, sft=tiny_base, cfg=cfg, progress=False, device="cpu", round_=1)
    assert len(started) == 2  # round 1 trained once (as round 2's start), then loaded from the cache
    assert [s[2] for s in started] == [2, 3] and final.info["round"] == 2 and first.info["round"] == 1
    assert all(s[1] is tiny_base.model for s in started)  # the reference is the SFT model in every round
    assert final.info["previous_round"] == first.path.name != final.path.name
    sft_weights = tiny_base.model.state_dict()
    assert all(torch.equal(v, sft_weights[k]) for k, v in started[0][0].items())
    assert all(torch.equal(v, first.model.state_dict()[k]) for k, v in started[1][0].items())
    assert not all(torch.equal(v, sft_weights[k]) for k, v in started[1][0].items())
    # round 2's pairs: the fresh prompts, answered by round 1's model (kept beside the weights)
    pairs = started[1][3]
    fresh = {e.instruction for e in data_splits(tiny_preset).dpo_round(2, 24)}
    assert pairs and {p.prompt for p in pairs} <= fresh
    assert read_pairs(final.path / "train_pairs.jsonl") == pairs
    with pytest.raises(ValueError, match="round_"):
        chain.train_or_load_dpo(tiny_preset, sft=tiny_base, cfg=cfg, progress=False, device="cpu", round_=3)


@pytest.mark.parametrize("loss_type, length_normalize", [("ipo", False), ("sigmoid", True), ("sigmoid", False)])
def test_ipo_and_length_normalised_dpo_take_log_ratios_per_token(tiny_base, tiny_splits, loss_type, length_normalize):
    """IPO regresses the *per-token* margin (TRL's reading, confirmed by IPO's authors), and
    length-normalised DPO divides by the answers' lengths too; plain DPO sums. Reference: the
    log-probabilities of each answer, divided (or not) by its response tokens, put in the formula."""
    from embiggen.methods.dpo import dpo_batch_loss

    tok, model = tiny_base.tokenizer, tiny_base.model
    pairs = [Comparison(e.instruction, "I do not know who that is.", "Sure.", e.cluster, "x", 1.0)
             for e in tiny_splits.preferences[:4]]
    ref = torch.tensor([[-3.0, -1.0], [-2.5, -4.0], [-6.0, -2.0], [-1.0, -1.5]])
    data = DPOData(encode_pairs(tok, pairs), ref, tok.pad_token_id)
    batch = data.batch([0, 1, 2, 3])
    cfg = DPOConfig(beta=0.5, loss_type=loss_type, length_normalize=length_normalize)
    with torch.no_grad():
        loss, _, _ = dpo_batch_loss(model, batch, cfg)
        logp, n_tokens = sequence_logprobs(model, batch)
    per_token = loss_type == "ipo" or length_normalize
    expected = []
    for i in range(4):
        lengths = (n_tokens[i].item(), n_tokens[4 + i].item()) if per_token else (1, 1)
        margin = ((logp[i].item() - ref[i, 0].item()) / lengths[0]) - ((logp[4 + i].item() - ref[i, 1].item()) / lengths[1])
        if loss_type == "ipo":
            expected.append((margin - 1 / (2 * 0.5)) ** 2)
        else:
            expected.append(-math.log(1 / (1 + math.exp(-0.5 * margin))))
    assert n_tokens[0] != n_tokens[4]  # the two answers differ in length, so normalising matters
    assert loss.item() == pytest.approx(sum(expected) / 4, rel=1e-5)
