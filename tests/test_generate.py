import math

import pytest
import torch

from embiggen.lm.generate import filter_logits, generate, next_token_distribution


def reference_filter(logits, temperature, top_k, top_p):
    """Written out one token at a time."""
    scaled = [l / temperature for l in logits]
    keep = set(range(len(scaled)))
    if top_k:
        ranked = sorted(range(len(scaled)), key=lambda i: -scaled[i])
        keep &= set(ranked[:top_k])
    if top_p is not None:
        z = sum(math.exp(scaled[i]) for i in keep)
        ranked = sorted(keep, key=lambda i: -scaled[i])
        total, nucleus = 0.0, set()
        for i in ranked:
            nucleus.add(i)
            total += math.exp(scaled[i]) / z
            if total >= top_p:
                break
        keep = nucleus
    return [s if i in keep else -math.inf for i, s in enumerate(scaled)]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.5, 3, None), (2.0, None, 0.7),
                                                      (1.0, 4, 0.5), (0.8, 1, None), (1.3, None, 0.99)])
def test_filter_logits_matches_reference(temperature, top_k, top_p):
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0, 1.5, -2.0, 0.7])
    got = filter_logits(logits, temperature, top_k, top_p).tolist()
    want = reference_filter(logits.tolist(), temperature, top_k, top_p)
    assert [math.isinf(g) for g in got] == [math.isinf(w) for w in want]
    assert [g for g in got if not math.isinf(g)] == pytest.approx([w for w in want if not math.isinf(w)])


def test_filter_logits_rejects_zero_temperature():
    with pytest.raises(ValueError, match="greedy"):
        filter_logits(torch.zeros(3), temperature=0)


def test_next_token_distribution_sums_to_at_most_one(tiny_base):
    dist = next_token_distribution(tiny_base.model, tiny_base.tokenizer, "Alma", k=5)
    probs = [p for _, p in dist]
    assert len(dist) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    top1 = next_token_distribution(tiny_base.model, tiny_base.tokenizer, "Alma", k=5, top_k=1)
    assert top1[0][1] == pytest.approx(1.0) and top1[0][0] == dist[0][0]
    assert next_token_distribution(tiny_base.model, tiny_base.tokenizer, "", k=3)  # start of a document


def test_generate_is_seeded_and_greedy_is_deterministic(tiny_base):
    m, t = tiny_base.model, tiny_base.tokenizer
    a = generate(m, t, ["Alma", "Bruno lives"], max_new_tokens=5, greedy=False, seed=1)
    b = generate(m, t, ["Alma", "Bruno lives"], max_new_tokens=5, greedy=False, seed=1)
    assert a == b
    g = generate(m, t, ["Alma", "Bruno lives", "x"], max_new_tokens=5)
    assert g[:2] == generate(m, t, ["Alma", "Bruno lives"], max_new_tokens=5)  # padding does not change results
    with pytest.raises(TypeError):
        generate(m, t, "Alma")


def test_decode_responses_cuts_at_eos_and_says_whether_each_ended(tiny_base):
    from embiggen.lm.generate import decode_responses

    tok = tiny_base.tokenizer
    yes = tok("Yes.", add_special_tokens=False)["input_ids"]
    user = tok.convert_tokens_to_ids("<|user|>")
    ended = yes + [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    cut = yes + [user] + yes  # hit the length limit; a role token the model wrote stays in the text
    texts, finished = decode_responses(tok, [torch.tensor(ended), cut])
    assert texts == ["Yes.", "Yes.<|user|>Yes."] and finished == [True, False]
    assert tok(texts[1], add_special_tokens=False)["input_ids"] == cut  # the text re-encodes to what was sampled


def test_chat_responses_and_generate_agree(tiny_base):
    from embiggen.lm.generate import chat_responses
    from embiggen.lm.tokenizer import chat_prompt

    tok, model = tiny_base.tokenizer, tiny_base.model
    texts, finished = chat_responses(model, tok, ["Hi?", "Where does Alma live?"], max_new_tokens=6)
    raw = generate(model, tok, [chat_prompt(tok, x) for x in ["Hi?", "Where does Alma live?"]], max_new_tokens=6,
                   skip_special_tokens=False)
    for text, done, r in zip(texts, finished, raw):
        assert done == (tok.eos_token in r)
        assert text == r.split(tok.eos_token)[0].replace(tok.pad_token, "").strip()


def reference_inverse_cdf(probs: list[float], u: float) -> int:
    """The first token whose running total of probability exceeds u (times the total), one by one."""
    total, target = 0.0, u * sum(probs)
    for i, p in enumerate(probs):
        total += p
        if total > target:
            return i
    return len(probs) - 1


def test_draw_tokens_inverts_the_cumulative_distribution_and_never_draws_an_impossible_token():
    from embiggen.lm.generate import draw_tokens

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 7, generator=g) * 2, -1)
    probs[:, 2] = 0.0  # impossible, and u = 0 would land on it if ties went left
    probs = probs / probs.sum(-1, keepdim=True)
    uniforms = torch.cat([torch.zeros(1), torch.rand(5, generator=g)])
    drawn = draw_tokens(probs, uniforms).tolist()
    assert drawn == [reference_inverse_cdf(p, u) for p, u in zip(probs.tolist(), uniforms.tolist())]
    many = draw_tokens(probs[:1].expand(100_000, -1), torch.rand(100_000, generator=g))
    freq = torch.bincount(many, minlength=7).double() / len(many)
    assert freq[2] == 0
    assert (freq - probs[0].double()).abs().max() < 0.01  # ~4 standard errors of the largest at 100k draws


def test_a_rollout_sampled_in_shares_is_the_rollout_sampled_whole(tiny_base):
    """What each process of a data-parallel run does: sample its rows with its rows' uniforms,
    padded to the whole rollout's prompt width, then widen to the longest share."""
    from embiggen.data.splits import data_splits
    from embiggen.lm.generate import prompt_width, sample_grouped_episodes, widen_responses

    model, tok = tiny_base.model, tiny_base.tokenizer
    instructions = [e.instruction for e in data_splits(tiny_base.preset).ppo[:5]]
    uniforms = torch.rand(5 * 2, 10, generator=torch.Generator().manual_seed(1))
    whole = sample_grouped_episodes(model, tok, instructions, 2, 10, uniforms=uniforms)
    assert whole["prompt_len"] == prompt_width(tok, instructions)
    for mine in ([0, 2, 4], [1, 3]):
        rows = [i * 2 + j for i in mine for j in range(2)]
        part = sample_grouped_episodes(model, tok, [instructions[i] for i in mine], 2, 10, uniforms=uniforms[rows],
                                       width=whole["prompt_len"])
        part = widen_responses(part, whole["responses"].shape[1], tok.pad_token_id)
        for key in ("sequences", "attention_mask", "position_ids", "responses", "mask", "finished"):
            assert torch.equal(part[key], whole[key][rows]), key
    with pytest.raises(ValueError, match="one row per answer"):
        sample_grouped_episodes(model, tok, instructions, 2, 10, uniforms=uniforms[:3])
