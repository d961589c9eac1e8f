"""Interactive widgets for the notebooks.

The logic a widget shows lives in plain functions (`prompt_problem`, `append_token`,
`sample_grid`, ...) that the tests call directly; the widget classes only wire them to
ipywidgets controls.
"""

from __future__ import annotations

import html

import ipywidgets as W
import matplotlib.pyplot as plt
from IPython.display import display

from .generate import generate, next_token_distribution
from .plots import plot_next_token_bars

EMPTY_PROMPT_MESSAGE = "Type a few words first: the model needs a prefix to continue."


# ---- plain logic -------------------------------------------------------------------------
def prompt_problem(text: str | None, max_chars: int = 2000) -> str | None:
    """A message for the learner if `text` cannot be used as a prompt, else None."""
    if text is None or not text.strip():
        return EMPTY_PROMPT_MESSAGE
    if len(text) > max_chars:
        return f"That prompt is {len(text)} characters long; keep it under {max_chars}."
    return None


def append_token(text: str, token: str) -> str:
    """The prompt after the learner clicks a token (tokens carry their own leading space)."""
    return text + token


def token_label(token: str) -> str:
    """How a token is written on a button or bar: spaces and newlines made visible."""
    return token.replace(" ", "␣").replace("\n", "⏎") or "∅"


def sample_grid(model, tokenizer, prompt: str, n: int, temperature: float, top_k: int, top_p: float,
                seed: int = 0, max_new_tokens: int = 30) -> list[str]:
    """`n` continuations of `prompt` with the given sampling settings (top_k=0 / top_p=1: off)."""
    problem = prompt_problem(prompt)
    if problem:
        raise ValueError(problem)
    return generate(model, tokenizer, [prompt] * n, max_new_tokens=max_new_tokens, greedy=False,
                    temperature=temperature, top_k=top_k or None, top_p=top_p if top_p < 1 else None,
                    seed=seed)


def samples_html(prompt: str, samples: list[str]) -> str:
    """Samples side by side, the prompt in grey and the model's text in black."""
    cells = "".join(
        f"<div style='flex:1;min-width:180px;border:1px solid #ccc;border-radius:6px;padding:6px;margin:3px'>"
        f"<b>#{i + 1}</b><br><span style='color:#888'>{html.escape(prompt)}</span>{html.escape(s)}</div>"
        for i, s in enumerate(samples))
    return f"<div style='display:flex;flex-wrap:wrap'>{cells}</div>"


def compare_answers(models: dict, instruction: str, answer: str | None = None, max_new_tokens: int = 32) -> list[dict]:
    """Each model's greedy answer to one instruction (chat-formatted), marked correct or not
    when the gold `answer` is known. `models` maps a name to (model, tokenizer)."""
    from .evaluate import exact_match
    from .sft import chat_prompt

    problem = prompt_problem(instruction)
    if problem:
        raise ValueError(problem)
    rows = []
    for name, (model, tokenizer) in models.items():
        response = generate(model, tokenizer, [chat_prompt(tokenizer, instruction)], max_new_tokens=max_new_tokens)[0]
        rows.append({"model": name, "response": response.strip(),
                     "correct": None if answer is None else exact_match(response, answer)})
    return rows


def comparison_html(instruction: str, rows: list[dict], answer: str | None = None) -> str:
    """Answers side by side, each with ✓ / ✗ when the gold answer is known."""
    marks = {True: "<span style='color:#2a2;font-size:1.3em'>✓</span>",
             False: "<span style='color:#c22;font-size:1.3em'>✗</span>", None: ""}
    cells = "".join(
        f"<div style='flex:1;min-width:200px;border:1px solid #ccc;border-radius:6px;padding:8px;margin:3px'>"
        f"<b>{html.escape(r['model'])}</b> {marks[r['correct']]}<br>"
        f"<span style='font-family:monospace'>{html.escape(r['response']) or '<i>(empty)</i>'}</span></div>"
        for r in rows)
    gold = f"<br><small>expected: <b>{html.escape(answer)}</b></small>" if answer is not None else ""
    return (f"<div style='margin:4px 0'><b>Instruction:</b> <span style='white-space:pre-wrap'>"
            f"{html.escape(instruction)}</span>{gold}</div><div style='display:flex;flex-wrap:wrap'>{cells}</div>")


# ---- widgets ---------------------------------------------------------------------------
class AutocompleteWidget:
    """Type a prefix, see the next-token probabilities, click a token to extend the text."""

    def __init__(self, model, tokenizer, prompt: str = "Alma Brook lives in", k: int = 8):
        self.model, self.tokenizer, self.k = model, tokenizer, k
        self.text = W.Textarea(value=prompt, layout=W.Layout(width="95%", height="60px"))
        self.message = W.HTML()
        self.plot = W.Output()
        self.buttons = W.HBox(layout=W.Layout(flex_flow="row wrap"))
        refresh = W.Button(description="Predict next token", icon="refresh")
        refresh.on_click(lambda _: self.refresh())
        self.text.observe(lambda change: self.refresh(), names="value")
        self.box = W.VBox([self.text, refresh, self.message, self.buttons, self.plot])
        self.refresh()

    def refresh(self):
        problem = prompt_problem(self.text.value)
        self.message.value = f"<span style='color:#b00'>{html.escape(problem)}</span>" if problem else ""
        self.plot.clear_output(wait=True)
        if problem:
            self.buttons.children = ()
            return
        dist = next_token_distribution(self.model, self.tokenizer, self.text.value, k=self.k)
        buttons = []
        for token, p in dist:
            b = W.Button(description=f"{token_label(token)}  {p:.0%}", layout=W.Layout(width="auto"))
            b.on_click(lambda _, t=token: setattr(self.text, "value", append_token(self.text.value, t)))
            buttons.append(b)
        self.buttons.children = tuple(buttons)
        with self.plot:
            fig, ax = plt.subplots(figsize=(6, 2.6))
            plot_next_token_bars(dist, ax, title=f"next token after: …{self.text.value[-40:]!r}")
            plt.show()

    def _ipython_display_(self):
        display(self.box)


class SamplingWidget:
    """Temperature, top-k and top-p sliders; several samples side by side."""

    def __init__(self, model, tokenizer, prompt: str = "Once upon a time,", n: int = 4):
        self.model, self.tokenizer = model, tokenizer
        self.prompt = W.Text(value=prompt, description="prompt", layout=W.Layout(width="95%"))
        self.temperature = W.FloatSlider(value=1.0, min=0.1, max=2.0, step=0.1, description="temperature")
        self.top_k = W.IntSlider(value=0, min=0, max=50, description="top-k (0=off)")
        self.top_p = W.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p (1=off)")
        self.n = W.IntSlider(value=n, min=1, max=8, description="samples")
        self.seed = W.IntText(value=0, description="seed")
        go = W.Button(description="Sample", button_style="primary", icon="play")
        go.on_click(lambda _: self.refresh())
        self.plot, self.output = W.Output(), W.HTML()
        controls = W.VBox([self.temperature, self.top_k, self.top_p, self.n, self.seed, go])
        self.box = W.VBox([self.prompt, W.HBox([controls, self.plot]), self.output])
        self.refresh()

    def refresh(self):
        problem = prompt_problem(self.prompt.value)
        self.plot.clear_output(wait=True)
        if problem:
            self.output.value = f"<span style='color:#b00'>{html.escape(problem)}</span>"
            return
        settings = dict(temperature=self.temperature.value, top_k=self.top_k.value or None,
                        top_p=self.top_p.value if self.top_p.value < 1 else None)
        dist = next_token_distribution(self.model, self.tokenizer, self.prompt.value, k=12, **settings)
        with self.plot:
            fig, ax = plt.subplots(figsize=(5, 2.6))
            plot_next_token_bars(dist, ax, title="first token, after temperature / top-k / top-p")
            plt.show()
        samples = sample_grid(self.model, self.tokenizer, self.prompt.value, self.n.value,
                              self.temperature.value, self.top_k.value, self.top_p.value, seed=self.seed.value)
        self.output.value = samples_html(self.prompt.value, samples)

    def _ipython_display_(self):
        display(self.box)


class ComparisonWidget:
    """Pick an evaluation prompt or type your own; every model answers side by side."""

    def __init__(self, models: dict, examples: list, custom: str = ""):
        self.models, self.examples = models, examples
        options = [(f"[{e.cluster}] {e.instruction[:70]}", i) for i, e in enumerate(examples)]
        self.pick = W.Dropdown(options=options, description="prompt", layout=W.Layout(width="95%"))
        self.custom = W.Textarea(value=custom, placeholder="…or type your own instruction here and press Answer",
                                 layout=W.Layout(width="95%", height="50px"))
        go = W.Button(description="Answer", button_style="primary", icon="play")
        go.on_click(lambda _: self.refresh(use_custom=True))
        self.pick.observe(lambda change: self.refresh(use_custom=False), names="value")
        self.output = W.HTML()
        self.box = W.VBox([self.pick, self.custom, go, self.output])
        self.refresh(use_custom=bool(custom.strip()))

    def refresh(self, use_custom: bool = False):
        if use_custom:
            instruction, answer = self.custom.value, None
        else:
            example = self.examples[self.pick.value]
            instruction, answer = example.instruction, example.answer
        problem = prompt_problem(instruction)
        if problem:
            self.output.value = f"<span style='color:#b00'>{html.escape(problem)}</span>"
            return
        self.output.value = comparison_html(instruction, compare_answers(self.models, instruction, answer), answer)

    def _ipython_display_(self):
        display(self.box)
