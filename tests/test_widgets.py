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
