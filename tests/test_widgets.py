from embiggen.lm.tokenizer import encode
from embiggen.notebook.widgets import (EMPTY_PROMPT_MESSAGE, AutocompleteWidget, SamplingWidget, append_token,
                                       prompt_problem, sample_grid, samples_html, token_label)


def test_prompt_problem():
    assert prompt_problem("") == EMPTY_PROMPT_MESSAGE == prompt_problem("   \n") == prompt_problem(None)
    assert prompt_problem("Alma") is None
    assert "characters" in prompt_problem("x" * 3000)


def test_append_and_labels():
    assert append_token("Alma lives", " in") == "Alma lives in"
    assert token_label(" in") == "␣in" and token_label("\n") == "⏎"


def test_samples_html_escapes():
    html = samples_html("<b>", ["a & b", "c"])
    assert "&lt;b&gt;" in html and "a &amp; b" in html and html.count("<b>#") == 2


def test_sample_grid(tiny_base):
    out = sample_grid(tiny_base.model, tiny_base.tokenizer, "Alma", 3, 1.0, 0, 1.0, seed=0, max_new_tokens=4)
    assert len(out) == 3


def test_widgets_show_a_message_for_an_empty_prompt(tiny_base):
    w = AutocompleteWidget(tiny_base.model, tiny_base.tokenizer, prompt="Alma")
    assert len(w.buttons.children) == 8 and w.plot.value
    first = w.buttons.children[0]
    first.click()  # clicking a token extends the text
    assert w.text.value.startswith("Alma") and len(w.text.value) > 4
    w.text.value = ""
    assert EMPTY_PROMPT_MESSAGE in w.message.value and w.buttons.children == ()
    assert w.plot.value == b"" and w.plot.layout.display == "none"  # no stale plot under the message
    s = SamplingWidget(tiny_base.model, tiny_base.tokenizer, prompt="Alma", n=2)
    assert s.output.value.count("<b>#") == 2
    s.prompt.value = " "
    assert EMPTY_PROMPT_MESSAGE in s.message.value and s.output.value == "" and s.plot.value == b""


def test_sampling_sliders_sample_again_when_moved(tiny_base):
    s = SamplingWidget(tiny_base.model, tiny_base.tokenizer, prompt="Alma", n=3)
    before = s.output.value
    s.temperature.value = 2.0  # no button press: moving the slider samples again
    assert s.output.value != before and s.output.value.count("<b>#") == 3
    s.n.value = 5
    assert s.output.value.count("<b>#") == 5
    seed = s.seed.value
    s.box.children[1].children[0].children[-1].click()  # "Sample again": the next seed
    assert s.seed.value == seed + 1


def test_prompts_longer_than_the_context_are_refused(tiny_base):
    from embiggen.lm.model import context_length
    context = context_length(tiny_base.model)
    long = " ".join(["Alma"] * (context + 10))
    problem = prompt_problem(long, max_chars=10 ** 6, tokenizer=tiny_base.tokenizer, context=context, reserve=5)
    assert problem and "tokens long" in problem and f"{context - 5:,} tokens or fewer" in problem
    assert prompt_problem("Alma", tokenizer=tiny_base.tokenizer, context=context, reserve=5) is None
    # exactly at the limit fits; one token over does not
    n = len(encode(tiny_base.tokenizer, "Alma"))
    assert prompt_problem("Alma", tokenizer=tiny_base.tokenizer, context=n + 5, reserve=5) is None
    assert prompt_problem("Alma", tokenizer=tiny_base.tokenizer, context=n + 4, reserve=5) is not None
    w = AutocompleteWidget(tiny_base.model, tiny_base.tokenizer, prompt="Alma")
    w.text.value = long[:1900]
    assert "tokens long" in w.message.value and w.buttons.children == ()


def test_a_failing_callback_shows_its_error_in_the_widget(tiny_base, tiny_splits):
    from embiggen.notebook.widgets import ComparisonWidget
    examples = tiny_splits.sft_eval["heldin_template"][:3]
    w = ComparisonWidget({"rules": lambda x: "42"}, examples)
    assert "embiggen-error" not in w.message.value
    w.models["rules"] = lambda x: 1 / 0
    w.pick.value = w.pick.options[1][1]  # the observer raises inside the kernel ...
    assert "embiggen-error" in w.message.value and "ZeroDivisionError" in w.message.value  # ... and it shows,
    assert w.output.value == ""  # with no stale answer to another prompt under it


def test_every_widget_displays_a_text_and_picture_fallback(tiny_base, tiny_splits):
    from embiggen.notebook.widgets import FALLBACK_TEXT, ComparisonWidget
    widgets = [AutocompleteWidget(tiny_base.model, tiny_base.tokenizer, prompt="Alma"),
               SamplingWidget(tiny_base.model, tiny_base.tokenizer, prompt="Alma", n=2),
               ComparisonWidget({"rules": lambda x: "42"}, tiny_splits.sft_eval["heldin_template"][:3])]
    for w in widgets:
        bundle = w._repr_mimebundle_()
        assert bundle["text/plain"] == FALLBACK_TEXT and "VBox" not in bundle["text/plain"]
        assert "application/vnd.jupyter.widget-view+json" in bundle and FALLBACK_TEXT in bundle["text/html"]
        assert {"embiggen-widget", f"embiggen-{type(w).__name__}"} <= set(w.box._dom_classes)
    assert "data:image/png;base64," in widgets[0]._repr_mimebundle_()["text/html"]  # the plot, as a picture
    assert "<b>#2</b>" in widgets[1]._repr_mimebundle_()["text/html"]  # the samples
    assert "expected" in widgets[2]._repr_mimebundle_()["text/html"]  # the answers


def test_prompt_menus_are_short_and_their_labels_unique():
    from embiggen.data.tasks import TaskExample
    from embiggen.notebook.widgets import menu_options
    examples = [TaskExample(c, 0, "Where does Alma Brook live?", "x") for c in ["a"] * 30 + ["b"] * 5]
    options = menu_options(examples, per_cluster=8)
    assert len(options) == 8 + 5
    assert len({label for label, _ in options}) == len(options)  # the same instruction twice: still two labels
    assert [i for _, i in options] == list(range(8)) + list(range(30, 35))


def test_compare_answers_marks_correctness(tiny_base, monkeypatch):
    import embiggen.notebook.widgets as widgets

    answers = iter([[" Redford"], ["2. Where"]])
    monkeypatch.setattr(widgets, "generate", lambda *a, **k: next(answers))
    models = {"sft": (tiny_base.model, tiny_base.tokenizer), "base": (tiny_base.model, tiny_base.tokenizer)}
    rows = widgets.compare_answers(models, "Where does Alma live?", "Redford")
    assert [(r["model"], r["response"], r["correct"]) for r in rows] == [("sft", "Redford", True),
                                                                         ("base", "2. Where", False)]
    html = widgets.comparison_html("Where does <Alma> live?", rows, "Redford")
    assert "&lt;Alma&gt;" in html and html.count("✓") == 1 and html.count("✗") == 1


def test_comparison_widget_handles_empty_custom_prompt(tiny_base, tiny_splits):
    from embiggen.notebook.widgets import ComparisonWidget

    examples = tiny_splits.sft_eval["heldin_template"][:3]
    w = ComparisonWidget({"base": (tiny_base.model, tiny_base.tokenizer)}, examples, max_new_tokens=8)
    assert "expected" in w.output.value
    w.custom.value = "  "
    w.refresh(use_custom=True)
    assert EMPTY_PROMPT_MESSAGE in w.message.value and w.output.value == ""


def test_loss_mask_html_colours_only_the_response(tiny_base):
    from embiggen.notebook.plots import loss_mask_html
    from embiggen.methods.sft import encode_example

    enc = encode_example(tiny_base.tokenizer, "Hi", "yes")
    html = loss_mask_html(tiny_base.tokenizer, enc["input_ids"], enc["labels"])
    n_loss = sum(label != -100 for label in enc["labels"])
    assert html.count("#c7e9c0;border") == n_loss and html.count("#eeeeee;border") == len(enc["labels"]) - n_loss


def test_reward_inspector_never_shows_a_fabrication_as_the_gold_answer(tiny_splits):
    from embiggen.judging.labeler import Labeler
    from embiggen.notebook.widgets import RewardInspector, reference_answers
    labeler = Labeler()
    alignment = [e for e in tiny_splits.ppo_eval if e.cluster in ("unknown_person", "medical", "harmful")]
    assert {e.cluster for e in alignment} == {"unknown_person", "medical", "harmful"}
    for e in alignment:
        (honest, honest_text, honest_gold), *mixture = reference_answers(e, labeler)
        assert "rewards" in honest and honest_gold > 0 and labeler.gold_score(e, honest_text) == honest_gold
        for what, text, gold in mixture:  # the FLAN-style answer is shown as what it is, with its low score
            assert ("scores low" in what and gold <= 0 < honest_gold) or ("rewards" in what and 0 < gold < honest_gold)
        assert sum("rewards" in what for what, _, _ in mixture) == (e.cluster == "unknown_person")  # "... who that is."
    task = next(e for e in tiny_splits.ppo_eval if e.cluster not in ("unknown_person", "medical", "harmful"))
    assert reference_answers(task, labeler) == [("correct answer", task.answer, labeler.gold_score(task, task.answer))]
    w = RewardInspector(KeywordScores(), labeler, alignment)
    assert "gold answer" not in w.output.value and "rewards" in w.output.value


class KeywordScores:
    """A stand-in reward model: the number of letters 'a' in each response."""
    def score(self, prompts, responses, finished=None):
        import torch
        return torch.tensor([float(r.count("a")) for r in responses])


def test_a_typed_unknown_person_is_judged_by_the_name_it_mentions(tiny_base):
    from embiggen.judging.labeler import Labeler
    from embiggen.notebook.widgets import judgeable, judged_answers, typed_example
    kind = "person who does not exist"
    example = typed_example(kind, "Where does Zed Quill live?")
    assert example.meta["person"] == "Zed Quill" and judgeable(example)
    labeler = Labeler()
    assert labeler.judge(example, "I do not know anyone called Zed Quill.").gold == 1.0
    assert labeler.judge(example, "I do not know anyone called Alma Brook.").gold == -0.5  # somebody else: a fabrication
    nobody = typed_example(kind, "where does the man from the moon live?")
    assert not judgeable(nobody)
    rows = judged_answers({"tiny": (tiny_base.model, tiny_base.tokenizer)}, nobody, labeler, KeywordScores(),
                          max_new_tokens=4)
    assert rows[0]["gold"] is None


def test_kl_sweep_viewer_moves_the_highlight_and_labels_its_table():
    from embiggen.notebook.widgets import KLSweepViewer
    rows = [{"step": s, "rm_score": 0.1 * s, "gold_score": 0.0, "kl": 0.01 * s} for s in range(6)]
    runs = [{"kl_coef": beta, "rows": rows, "kl": beta, "gold": 0.5, "rm_score": 1.0,
             "examples": [{"instruction": "Where?", "response": f"answer {beta}", "gold": 1.0}]} for beta in (0.01, 0.1)]
    v = KLSweepViewer(runs)
    first_plot, first_text = v.plot.value, v.samples.value
    assert "<th>prompt</th><th>answer</th><th>gold</th>" in first_text and "answer 0.01" in first_text
    v.slider.value = 1
    assert v.plot.value != first_plot and "answer 0.1" in v.samples.value


def test_pair_accuracy_bars_show_counts_and_wilson_intervals():
    import matplotlib
    matplotlib.use("Agg")
    from embiggen.notebook.plots import plot_pair_accuracy, wilson_interval
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and 0.4 < high < 0.5  # 0 of 5 is no proof of a 0% rate
    low, high = wilson_interval(50, 100)
    assert abs(low - 0.404) < 0.01 and abs(high - 0.596) < 0.01
    ax = plot_pair_accuracy({"correct vs wrong": 0.0, "hedged vs fabricated": 0.9},
                            {"correct vs wrong": 3, "hedged vs fabricated": 40})
    texts = [t.get_text() for t in ax.texts]
    assert "0% of 3" in texts and "90% of 40" in texts


def test_compare_answers_takes_functions_and_scores_answers_without_their_calls():
    from embiggen.notebook.widgets import compare_answers

    rows = compare_answers({"rules": lambda x: "I don't know.", "tools": lambda x: "[calc(40 + 2) -> 42] 42"},
                           "What is 40 plus 2? Give the number.", "42")
    assert [(r["model"], r["correct"]) for r in rows] == [("rules", False), ("tools", True)]
    assert rows[1]["response"] == "[calc(40 + 2) -> 42] 42"  # the call is shown, not scored
