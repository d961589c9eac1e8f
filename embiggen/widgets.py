"""Interactive widgets for the notebooks.

The logic a widget shows lives in plain functions (`prompt_problem`, `append_token`,
`sample_grid`, ...) that the tests call directly; the widget classes only wire them to
ipywidgets controls.
"""

from __future__ import annotations

import html

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from .evaluate import exact_match
from .generate import chat_responses, generate, next_token_distribution
from .plots import plot_kl_sweep, plot_next_token_bars
from .tasks import TaskExample
from .tokenizer import chat_prompt
from .toolbox import strip_calls

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
    when the gold `answer` is known. `models` maps a name to (model, tokenizer), or to any
    function from instruction to answer (notebook 5's rules; a model that calls tools, whose
    calls are shown but not scored)."""
    problem = prompt_problem(instruction)
    if problem:
        raise ValueError(problem)
    rows = []
    for name, entry in models.items():
        if callable(entry):
            response = entry(instruction)
        else:
            model, tokenizer = entry
            response = generate(model, tokenizer, [chat_prompt(tokenizer, instruction)],
                                max_new_tokens=max_new_tokens)[0]
        rows.append({"model": name, "response": response.strip(),
                     "correct": None if answer is None else exact_match(strip_calls(response), answer)})
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


# ---- notebook 3: aligned models, judged ------------------------------------------------------
#: Kinds a learner can give a typed prompt, so the labeler knows how to judge it.
CUSTOM_KINDS = {"ordinary task (no gold answer)": "custom", "person who does not exist": "unknown_person",
                "medical question": "medical", "harmful request": "harmful"}


def judged_answers(models: dict, example, labeler, reward_model, max_new_tokens: int = 32,
                   best_of: tuple | None = None) -> list[dict]:
    """Each model's greedy answer to `example`, with the labeler's gold score and the reward
    model's score. `best_of=(name, model, tokenizer, n)` adds the reward model's favourite of
    n samples. A typed prompt (cluster 'custom') has no gold answer: its gold score is None."""
    problem = prompt_problem(example.instruction)
    if problem:
        raise ValueError(problem)
    entries = []
    for name, (model, tokenizer) in models.items():
        texts, finished = chat_responses(model, tokenizer, [example.instruction], max_new_tokens=max_new_tokens)
        entries.append((name, texts[0], finished[0]))
    if best_of is not None:
        name, model, tokenizer, n = best_of
        texts, finished = chat_responses(model, tokenizer, [example.instruction] * n, max_new_tokens=max_new_tokens,
                                         greedy=False, seed=0)
        scores = reward_model.score([example.instruction] * n, texts, finished) - _unfinished(finished)
        i = int(scores.argmax())
        entries.append((f"{name} (best of {n})", texts[i], finished[i]))
    rm = reward_model.score([example.instruction] * len(entries), [t for _, t, _ in entries],
                            [f for _, _, f in entries]).tolist()
    rows = []
    for (name, text, done), score in zip(entries, rm):
        judged = example.cluster != "custom"
        j = labeler.judge(example, text, done) if judged else None
        rows.append({"model": name, "response": text, "finished": done, "rm_score": score,
                     "gold": j.gold if judged else None, "category": j.category if judged else "—"})
    return rows


def _unfinished(finished: list[bool]):
    return torch.tensor([0.0 if f else 1.0 for f in finished])


def judged_html(instruction: str, rows: list[dict]) -> str:
    """Answers side by side with gold and reward-model scores (green when gold > 0)."""
    def gold_cell(r):
        if r["gold"] is None:
            return "gold: <i>n/a</i>"
        colour = "#2a2" if r["gold"] > 0 else "#c22"
        return f"gold: <b style='color:{colour}'>{r['gold']:+.2f}</b> ({html.escape(r['category'])})"

    cells = "".join(
        f"<div style='flex:1;min-width:190px;border:1px solid #ccc;border-radius:6px;padding:8px;margin:3px'>"
        f"<b>{html.escape(r['model'])}</b><br><span style='font-family:monospace'>"
        f"{html.escape(r['response']) or '<i>(empty)</i>'}</span>{'' if r['finished'] else ' <i>(never ended)</i>'}"
        f"<hr style='margin:4px 0'><small>{gold_cell(r)} · reward model: <b>{r['rm_score']:+.2f}</b></small></div>"
        for r in rows)
    return (f"<div style='margin:4px 0'><b>Prompt:</b> <span style='white-space:pre-wrap'>{html.escape(instruction)}"
            f"</span></div><div style='display:flex;flex-wrap:wrap'>{cells}</div>")


class AlignmentComparisonWidget:
    """Base / SFT / PPO (and best-of-n) on a chosen or typed prompt, with gold and reward-model scores."""

    def __init__(self, models: dict, examples: list, labeler, reward_model, best_of: tuple | None = None):
        self.models, self.examples, self.labeler, self.rm, self.best_of = models, examples, labeler, reward_model, best_of
        options = [(f"[{e.cluster}] {e.instruction[:70]}", i) for i, e in enumerate(examples)]
        self.pick = W.Dropdown(options=options, description="prompt", layout=W.Layout(width="95%"))
        self.custom = W.Textarea(placeholder="…or type your own prompt, say what kind it is, and press Answer",
                                 layout=W.Layout(width="95%", height="50px"))
        self.kind = W.Dropdown(options=list(CUSTOM_KINDS), description="kind")
        go = W.Button(description="Answer", button_style="primary", icon="play")
        go.on_click(lambda _: self.refresh(use_custom=True))
        self.pick.observe(lambda change: self.refresh(use_custom=False), names="value")
        self.output = W.HTML()
        self.box = W.VBox([self.pick, self.custom, W.HBox([self.kind, go]), self.output])
        self.refresh(use_custom=False)

    def refresh(self, use_custom: bool):
        if use_custom:
            problem = prompt_problem(self.custom.value)
            if problem:
                self.output.value = f"<span style='color:#b00'>{html.escape(problem)}</span>"
                return
            example = TaskExample(CUSTOM_KINDS[self.kind.value], 0, self.custom.value.strip(), "")
        else:
            example = self.examples[self.pick.value]
        rows = judged_answers(self.models, example, self.labeler, self.rm, best_of=self.best_of)
        self.output.value = judged_html(example.instruction, rows)

    def _ipython_display_(self):
        display(self.box)


def inspect_reward(reward_model, labeler, example, response: str) -> dict:
    """Reward-model score and gold score of any response a learner types."""
    problem = prompt_problem(response)
    if problem:
        raise ValueError(problem.replace("prompt", "response").replace("a prefix to continue", "something to score"))
    rm = reward_model.score([example.instruction], [response.strip()]).item()
    j = labeler.judge(example, response)
    return {"rm_score": rm, "gold": j.gold, "category": j.category}


def answer_label(example) -> str:
    """What `example.answer` is: for an ordinary task the right answer; for an alignment prompt the
    instruction mixture's FLAN-style answer, a confident fabrication (or compliance) that the
    labeler scores below an honest hedge or a refusal, not a gold answer."""
    if example.cluster in ("unknown_person", "medical", "harmful"):
        return "the instruction mixture's answer (FLAN-style; the labeler scores it low)"
    return "correct answer"


class RewardInspector:
    """Type any response to a prompt and see the reward model's score next to the gold score:
    can you find an answer the reward model loves and the labeler hates?"""

    def __init__(self, reward_model, labeler, examples: list, response: str = "I cannot help with that."):
        self.rm, self.labeler, self.examples = reward_model, labeler, examples
        options = [(f"[{e.cluster}] {e.instruction[:70]}", i) for i, e in enumerate(examples)]
        self.pick = W.Dropdown(options=options, description="prompt", layout=W.Layout(width="95%"))
        self.response = W.Textarea(value=response, description="response", layout=W.Layout(width="95%", height="50px"))
        go = W.Button(description="Score", button_style="primary", icon="balance-scale")
        go.on_click(lambda _: self.refresh())
        self.pick.observe(lambda change: self.refresh(), names="value")
        self.output = W.HTML()
        self.history: list[dict] = []
        self.box = W.VBox([self.pick, self.response, go, self.output])
        self.refresh()

    def refresh(self):
        example = self.examples[self.pick.value]
        try:
            out = inspect_reward(self.rm, self.labeler, example, self.response.value)
        except ValueError as exc:
            self.output.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            return
        self.history.append({"prompt": example.instruction[:50], "response": self.response.value.strip()[:60], **out})
        rows = "".join(f"<tr><td>{html.escape(h['prompt'])}</td><td><code>{html.escape(h['response'])}</code></td>"
                       f"<td>{h['rm_score']:+.2f}</td><td>{h['gold']:+.2f} ({html.escape(h['category'])})</td></tr>"
                       for h in reversed(self.history[-8:]))
        expected = f"<small>{answer_label(example)}: <b>{html.escape(example.answer)}</b></small><br>" \
            if example.answer else ""
        self.output.value = (f"{expected}<table><tr><th>prompt</th><th>response</th><th>reward model</th>"
                             f"<th>gold</th></tr>{rows}</table>")

    def _ipython_display_(self):
        display(self.box)


class KLSweepViewer:
    """A slider over the runs of the KL-coefficient sweep: the chosen run is drawn bold on
    the proxy-vs-gold plot, with a few of its answers underneath."""

    def __init__(self, runs: list[dict]):
        self.runs = runs
        self.slider = W.SelectionSlider(options=[(f"beta = {r['kl_coef']:g}", i) for i, r in enumerate(runs)],
                                        description="run", layout=W.Layout(width="60%"))
        self.plot, self.samples = W.Output(), W.HTML()
        self.slider.observe(lambda change: self.refresh(), names="value")
        self.box = W.VBox([self.slider, self.plot, self.samples])
        self.refresh()

    def refresh(self):
        i = self.slider.value
        self.plot.clear_output(wait=True)
        with self.plot:
            plot_kl_sweep(self.runs, highlight=i)
            plt.show()
        run = self.runs[i]
        rows = "".join(f"<tr><td>{html.escape(r['instruction'][:60])}</td><td><code>{html.escape(r['response'])}</code>"
                       f"</td><td>{r['gold']:+.2f}</td></tr>" for r in run.get("examples", [])[:6])
        self.samples.value = (f"<b>beta = {run['kl_coef']:g}</b>: on held-out prompts KL {run.get('kl', float('nan')):.2f}"
                              f" nats, gold {run.get('gold', float('nan')):+.2f}, reward model "
                              f"{run.get('rm_score', float('nan')):+.2f}<table>{rows}</table>")

    def _ipython_display_(self):
        display(self.box)
