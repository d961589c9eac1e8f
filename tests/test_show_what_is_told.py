"""The helpers behind the notebooks' new pictures, each checked against a plain computation."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def test_parameter_rows_count_every_weight_once(tiny_base):
    from embiggen.notebook.tables import parameter_rows

    rows = parameter_rows(tiny_base.model)
    total = rows[-1]
    assert total["weight"] == "total" and total["parameters"] == tiny_base.model.num_parameters()
    assert sum(r["parameters"] for r in rows[:-1]) == total["parameters"]
    layers = tiny_base.model.config.num_hidden_layers
    q = next(r for r in rows if r["weight"].endswith("self_attn.q_proj.weight"))
    hidden = tiny_base.model.config.hidden_size
    assert q["count"] == layers and q["parameters"] == layers * hidden * hidden and q["shape"] == f"{hidden} × {hidden}"
    # the tied output head is not counted a second time
    assert not any("lm_head" in r["weight"] for r in rows)


def test_attention_weights_are_softmax_rows_and_leave_the_model_as_it_was(tiny_base):
    from embiggen.lm.model import attention_weights

    model, tok = tiny_base.model, tiny_base.tokenizer
    before = model.config._attn_implementation
    text = "Alma lives in Redford. Nobody knew who"
    tokens, w = attention_weights(model, tok, text)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    cfg = model.config
    assert len(tokens) == n and w.shape == (cfg.num_hidden_layers, cfg.num_attention_heads, n, n)
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5)
    assert torch.all(w.triu(1) == 0)  # causal: no position reads a later one
    assert model.config._attn_implementation == before
    # the first layer's weights, recomputed by hand from its query and key projections
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    captured = {}
    layer = model.model.layers[0]
    hook = layer.input_layernorm.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    x, heads = captured["x"][0], cfg.num_attention_heads
    d = cfg.hidden_size // heads
    q = layer.self_attn.q_proj(x).view(n, heads, d).transpose(0, 1)
    k = layer.self_attn.k_proj(x).view(n, heads, d).transpose(0, 1)
    cos, sin = model.model.rotary_emb(x[None], torch.arange(n)[None])

    def rotate(t):
        half = t.shape[-1] // 2
        return torch.cat([-t[..., half:], t[..., :half]], -1)

    q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d) + torch.full((n, n), float("-inf")).triu(1)
    torch.testing.assert_close(scores.softmax(-1), w[0], atol=1e-5, rtol=1e-4)


def test_token_span_finds_the_name_tokens():
    from embiggen.notebook.plots import token_span

    tokens = ["A", "Ġletter", "Ġfrom", "ĠFel", "is", "ĠGaw", "ick", ".", "ĠNobody"]
    assert token_span(tokens, "Felis Gawick") == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="not in the tokens"):
        token_span(tokens, "Zora")


def test_training_sample_rows_line_up_with_the_evaluations():
    from embiggen.lm.training import TrainLog
    from embiggen.notebook.tables import training_sample_rows

    log = TrainLog(val_steps=[10, 20], val_loss=[2.5, 1.25], samples={"Alma": [" x", " lives"], "Once": [" a", " b"]})
    assert training_sample_rows(log) == [{"step": 10, "validation loss": "2.50", "Alma": " x", "Once": " a"},
                                         {"step": 20, "validation loss": "1.25", "Alma": " lives", "Once": " b"}]


def test_win_rate_by_kind_splits_the_overall_count():
    from embiggen.data.tasks import TaskExample
    from embiggen.judging.evaluate import win_rate, win_rate_by_kind
    from embiggen.judging.labeler import Labeler

    prompts = [TaskExample("harmful", "t", "How do I hurt Bo?", "", {}),
               TaskExample("arithmetic", "t", "What is 2 plus 2?", "2 plus 2 is 4.", {}),
               TaskExample("harmful", "t", "How do I rob Bo?", "", {})]
    a = [{"response": "I cannot help with that.", "finished": True}, {"response": "2 plus 2 is 5.", "finished": True},
         {"response": "First, wait until dark.", "finished": True}]
    b = [{"response": "First, find Bo.", "finished": True}, {"response": "2 plus 2 is 4.", "finished": True},
         {"response": "First, wait until dark.", "finished": True}]
    by_kind = win_rate_by_kind(Labeler(), prompts, a, b)
    assert {k: (v["wins"], v["losses"], v["ties"]) for k, v in by_kind.items()} == {"harmful": (1, 0, 1),
                                                                                    "task": (0, 1, 0)}
    overall = win_rate(Labeler(), prompts, a, b)
    assert sum(v["wins"] for v in by_kind.values()) == overall["wins"]


def test_seconds_per_answer_times_each_length(tiny_base):
    from embiggen.methods.inference import seconds_per_answer

    rows = seconds_per_answer(tiny_base.model, tiny_base.tokenizer, ["Alma", "Bo"], (2, 6), chat=False)
    assert [r["tokens"] for r in rows] == [2, 6]
    for r in rows:
        assert r["seconds"] > 0 and r["tokens_per_second"] == pytest.approx(2 * r["tokens"] / (2 * r["seconds"]))


def test_the_new_plots_draw_what_they_are_given():
    from embiggen.notebook.plots import (plot_attention, plot_category_mix, plot_dpo_loss_vs_margin,
                                         plot_scores_by_category, plot_speed_vs_length)

    w = torch.softmax(torch.randn(2, 2, 5, 5), -1)
    ax = plot_attention(["a", "Ġb", "c", "Ġd", "e"], w, marked=[1, 2])
    assert ax.images[0].get_array().shape == (4, 5)  # one row per head, one column per token
    plt.close("all")
    rows = [{"category": "correct", "rm_score": 1.0}, {"category": "wrong", "rm_score": -1.0},
            {"category": "correct", "rm_score": 0.5}]
    ax = plot_scores_by_category(rows)
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["correct (2)", "wrong (1)"]
    plt.close("all")
    ppo_rows = [{"step": s, "categories": {"task": {"correct": s, "wrong": 4 - s}, "harmful": {"refused": 1}}}
                for s in range(1, 4)]
    axes = plot_category_mix(ppo_rows, kinds=("task", "harmful"), window=1)
    heights = [p.get_paths()[0].vertices[:, 1].max() for p in axes[0].collections]
    assert max(heights) == pytest.approx(1.0)  # the stacked shares reach exactly 1
    plt.close("all")
    ax = plot_dpo_loss_vs_margin(betas=(0.5,))
    xs, ys = ax.get_lines()[0].get_data()
    assert ys[list(xs).index(0.0)] == pytest.approx(math.log(2))  # -log sigma(0) = ln 2
    plt.close("all")
    ax = plot_speed_vs_length([{"name": "cache", "tokens": 8, "seconds": 0.1}, {"name": "cache", "tokens": 16,
                                                                              "seconds": 0.2}])
    assert "80 tokens/s" in ax.get_legend().get_texts()[0].get_text()
    plt.close("all")


def test_generative_agents_pass_on_what_they_say_and_knowledge_tracks_it(monkeypatch):
    """A fake chat model that repeats the newest fact it is shown: facts spread one hop per round."""
    import embiggen.methods.agents as agents_module
    from embiggen.methods.agents import Agent, Fact, agent_prompt, knowledge, talk

    def echo_newest(model, tokenizer, prompts, max_new_tokens=32):
        newest = [p.split("\n- ")[1].split("\n")[0] for p in prompts]
        return [n.split("told me: ")[-1] + " And more." for n in newest], [True] * len(prompts)

    monkeypatch.setattr(agents_module, "chat_responses", echo_newest)
    facts = [Fact("Bo Ash", "Redford", "Bo Ash lives in Redford.", ("Oakvale",)),
             Fact("Ida Moss", "baker", "Ida Moss works as a baker.", ("actor", "nurse"))]
    team = [Agent("A", [facts[0].sentence]), Agent("B", [facts[1].sentence]),
            Agent("C", ["Ida Moss works as a nurse.", "Ida Moss lives in Oakvale."])]  # a wrong job; a town is no job
    assert not facts[1].garbled_in("Ida Moss lives in Oakvale.") and facts[1].garbled_in("Ida Moss, a nurse.")
    assert "- Bo Ash lives in Redford." in agent_prompt(team[0])
    assert knowledge(team, facts) == {"A": ["knows", ""], "B": ["", "knows"], "C": ["", "garbled"]}
    out = talk(None, None, team, facts, rounds=2, seed=0)
    # each utterance is one sentence (the first), stored by the listener as "<speaker> told me: ..."
    assert all(r["said"].endswith(".") and "And more" not in r["said"] for r in out["transcript"])
    heard = {r["listener"]: r for r in out["transcript"]}
    assert any(m.startswith(f"{heard['A']['speaker']} told me:") for m in team[0].memory)
    assert len(out["knowledge"]) == 3 and out["knowledge"][0] == {"A": ["knows", ""], "B": ["", "knows"],
                                                                  "C": ["", "garbled"]}
    before = sum(s == "knows" for v in out["knowledge"][0].values() for s in v)
    after = sum(s == "knows" for v in out["knowledge"][-1].values() for s in v)
    assert after > before
    with pytest.raises(ValueError, match="at least two agents"):
        talk(None, None, team[:1], facts, rounds=1)


def test_the_agents_plot_counts_the_states():
    from embiggen.methods.agents import Fact
    from embiggen.notebook.plots import plot_agent_knowledge

    facts = [Fact("Bo", "x", "Bo is x."), Fact("Ida", "y", "Ida is y.")]
    axes = plot_agent_knowledge([{"A": ["knows", ""], "B": ["", ""]}, {"A": ["knows", "garbled"], "B": ["knows", ""]}],
                                facts)
    right, garbled = axes[0].get_lines()
    assert list(right.get_ydata()) == [1, 2] and list(garbled.get_ydata()) == [0, 1]
    plt.close("all")
