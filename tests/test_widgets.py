from embiggen.widgets import (EMPTY_PROMPT_MESSAGE, AutocompleteWidget, SamplingWidget, append_token,
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
    assert len(w.buttons.children) == 8
    first = w.buttons.children[0]
    first.click()  # clicking a token extends the text
    assert w.text.value.startswith("Alma") and len(w.text.value) > 4
    w.text.value = ""
    assert EMPTY_PROMPT_MESSAGE in w.message.value and w.buttons.children == ()
    s = SamplingWidget(tiny_base.model, tiny_base.tokenizer, prompt="Alma", n=2)
    assert s.output.value.count("<b>#") == 2
    s.prompt.value = " "
    s.refresh()
    assert EMPTY_PROMPT_MESSAGE in s.output.value


def test_compare_answers_marks_correctness(tiny_base, monkeypatch):
    import embiggen.widgets as widgets

    answers = iter([[" Redford"], ["2. Where"]])
    monkeypatch.setattr(widgets, "generate", lambda *a, **k: next(answers))
    models = {"sft": (tiny_base.model, tiny_base.tokenizer), "base": (tiny_base.model, tiny_base.tokenizer)}
    rows = widgets.compare_answers(models, "Where does Alma live?", "Redford")
    assert [(r["model"], r["response"], r["correct"]) for r in rows] == [("sft", "Redford", True),
                                                                         ("base", "2. Where", False)]
    html = widgets.comparison_html("Where does <Alma> live?", rows, "Redford")
    assert "&lt;Alma&gt;" in html and html.count("✓") == 1 and html.count("✗") == 1


def test_comparison_widget_handles_empty_custom_prompt(tiny_base, tiny_splits):
    from embiggen.widgets import ComparisonWidget

    examples = tiny_splits.sft_eval["heldin_template"][:3]
    w = ComparisonWidget({"base": (tiny_base.model, tiny_base.tokenizer)}, examples)
    assert "expected" in w.output.value
    w.custom.value = "  "
    w.refresh(use_custom=True)
    assert EMPTY_PROMPT_MESSAGE in w.output.value


def test_loss_mask_html_colours_only_the_response(tiny_base):
    from embiggen.plots import loss_mask_html
    from embiggen.sft import encode_example

    enc = encode_example(tiny_base.tokenizer, "Hi", "yes")
    html = loss_mask_html(tiny_base.tokenizer, enc["input_ids"], enc["labels"])
    n_loss = sum(label != -100 for label in enc["labels"])
    assert html.count("#c7e9c0;border") == n_loss and html.count("#eeeeee;border") == len(enc["labels"]) - n_loss


def test_answer_label_does_not_call_a_fabrication_gold():
    from types import SimpleNamespace

    from embiggen.widgets import answer_label
    assert "mixture" in answer_label(SimpleNamespace(cluster="unknown_person"))
    assert "gold" not in answer_label(SimpleNamespace(cluster="medical"))
    assert answer_label(SimpleNamespace(cluster="arithmetic")) == "correct answer"


def test_pair_accuracy_bars_show_counts_and_wilson_intervals():
    import matplotlib
    matplotlib.use("Agg")
    from embiggen.plots import plot_pair_accuracy, wilson_interval
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and 0.4 < high < 0.5  # 0 of 5 is no proof of a 0% rate
    low, high = wilson_interval(50, 100)
    assert abs(low - 0.404) < 0.01 and abs(high - 0.596) < 0.01
    ax = plot_pair_accuracy({"correct vs wrong": 0.0, "hedged vs fabricated": 0.9},
                            {"correct vs wrong": 3, "hedged vs fabricated": 40})
    texts = [t.get_text() for t in ax.texts]
    assert "0% of 3" in texts and "90% of 40" in texts


def test_compare_answers_takes_functions_and_scores_answers_without_their_calls():
    from embiggen.widgets import compare_answers

    rows = compare_answers({"rules": lambda x: "I don't know.", "tools": lambda x: "[calc(40 + 2) -> 42] 42"},
                           "What is 40 plus 2? Give the number.", "42")
    assert [(r["model"], r["correct"]) for r in rows] == [("rules", False), ("tools", True)]
    assert rows[1]["response"] == "[calc(40 + 2) -> 42] 42"  # the call is shown, not scored
