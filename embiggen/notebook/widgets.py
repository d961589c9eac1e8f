"""Interactive widgets for the notebooks.

The logic a widget shows lives in plain functions (`prompt_problem`, `append_token`,
`sample_grid`, ...) that the tests call directly; the widget classes only wire them to
ipywidgets controls. Every widget shares `LiveWidget`'s habits:

* its box and controls carry stable CSS classes and descriptions (`embiggen-<Class>`), so a
  screen reader, and the browser test in `tests/browser/`, can find them;
* a callback that raises shows the error in red inside the widget (a learner would otherwise
  see nothing happen), and a prompt the model cannot read is refused with one line;
* it displays with a text and picture fallback: a notebook opened untrusted (any fresh clone),
  on GitHub, or without its kernel shows "Interactive widget: run this cell to use it" and a
  snapshot of what the widget showed, not `VBox(children=(...`.
"""

from __future__ import annotations

import base64
import html
import io
import re
import traceback

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from embiggen.data.mixture import DONT_KNOW, DONT_KNOW_WHO, NOT_A_DOCTOR, REFUSAL
from embiggen.data.tasks import TaskExample
from embiggen.data.toolbox import strip_calls
from embiggen.judging.evaluate import exact_match, person_in_prompt
from embiggen.lm.generate import chat_responses, generate, next_token_distribution
from embiggen.lm.model import context_length
from embiggen.lm.tokenizer import chat_prompt, encode
from embiggen.methods.grpo import push_of_one_update
from embiggen.methods.reward_ensemble import conservative
from embiggen.notebook.plots import plot_kl_sweep, plot_next_token_bars, token_push_html

EMPTY_PROMPT_MESSAGE = "Type a few words first: the model needs a prefix to continue."
FALLBACK_TEXT = "Interactive widget: run this cell (and the cells above it) to use it."
#: how many prompts of each cluster a prompt menu offers (a menu of 900 helps nobody)
PER_CLUSTER = 8
#: labels wide enough to read ("temperature", "top-k (0 = off)"), not cut off at 80 px
LABEL = {"description_width": "initial"}
#: ipywidgets' HTML has a 28 px line height (one line of controls); text reads better tighter
TEXT_STYLE = "line-height:1.35"


# ---- plain logic -------------------------------------------------------------------------
def prompt_problem(text: str | None, max_chars: int = 2000, tokenizer=None, context: int | None = None,
                   reserve: int = 0, chat: bool = False) -> str | None:
    """A message for the learner if `text` cannot be used as a prompt, else None. With a
    `tokenizer` and the model's `context` (in tokens), the prompt (chat-formatted with `chat`)
    plus `reserve` tokens for the answer must fit in the context: a model cannot read past it."""
    if text is None or not text.strip():
        return EMPTY_PROMPT_MESSAGE
    if len(text) > max_chars:
        return f"That prompt is {len(text):,} characters long; keep it under {max_chars:,}."
    if tokenizer is not None and context:
        n = len(encode(tokenizer, chat_prompt(tokenizer, text) if chat else text))
        if n + reserve > context:
            return (f"That prompt is {n:,} tokens long, and this model reads {context:,} tokens at most"
                    + (f", {reserve} of them kept for the answer" if reserve else "")
                    + f": shorten it to {context - reserve:,} tokens or fewer.")
    return None


def models_problem(models: dict, text: str, reserve: int, chat: bool = True) -> str | None:
    """`prompt_problem` for every (model, tokenizer) in `models` (functions are not checked)."""
    for entry in models.values():
        if not callable(entry):
            model, tokenizer = entry
            problem = prompt_problem(text, tokenizer=tokenizer, context=context_length(model), reserve=reserve,
                                     chat=chat)
            if problem:
                return problem
    return prompt_problem(text)


def append_token(text: str, token: str) -> str:
    """The prompt after the learner clicks a token (tokens carry their own leading space)."""
    return text + token


def token_label(token: str) -> str:
    """How a token is written on a button or bar: spaces and newlines made visible."""
    return token.replace(" ", "␣").replace("\n", "⏎") or "∅"


def menu_options(examples: list, per_cluster: int = PER_CLUSTER, width: int = 70) -> list[tuple[str, int]]:
    """A prompt menu: at most `per_cluster` prompts of each cluster, in the order given, each
    label numbered so that no two read the same. Values index into `examples`."""
    taken: dict[str, int] = {}
    options = []
    for i, e in enumerate(examples):
        if taken.get(e.cluster, 0) < per_cluster:
            taken[e.cluster] = taken.get(e.cluster, 0) + 1
            text = " ".join(e.instruction.split())
            text = text if len(text) <= width else text[:width - 1] + "…"
            options.append((f"{len(options) + 1}. [{e.cluster}] {text}", i))
    return options


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (and closed, so notebooks do not collect figures)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def png_html(png: bytes | None) -> str:
    return "" if not png else f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def notice_html(message: str) -> str:
    """A problem with the learner's input, in one line."""
    return f"<span class='embiggen-notice' style='color:#b00'>{html.escape(message)}</span>"


def error_html(exc: BaseException) -> str:
    """A callback that failed: what went wrong, in red, with the traceback folded away."""
    trace = "".join(traceback.format_exception(exc))
    return (f"<div class='embiggen-error' style='color:#b00;{TEXT_STYLE}'>⚠ The widget failed: "
            f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}<details><summary>traceback</summary>"
            f"<pre>{html.escape(trace)}</pre></details></div>")


def sample_grid(model, tokenizer, prompt: str, n: int, temperature: float, top_k: int, top_p: float,
                seed: int = 0, max_new_tokens: int = 30) -> list[str]:
    """`n` continuations of `prompt` with the given sampling settings (top_k=0 / top_p=1: off)."""
    problem = prompt_problem(prompt, tokenizer=tokenizer, context=context_length(model), reserve=max_new_tokens)
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
    return f"<div style='display:flex;flex-wrap:wrap;{TEXT_STYLE}'>{cells}</div>"


def compare_answers(models: dict, instruction: str, answer: str | None = None, max_new_tokens: int = 32) -> list[dict]:
    """Each model's greedy answer to one instruction (chat-formatted), marked correct or not
    when the gold `answer` is known. `models` maps a name to (model, tokenizer), or to any
    function from instruction to answer (notebook 6's rules; a model that calls tools, whose
    calls are shown but not scored)."""
    problem = models_problem(models, instruction, reserve=max_new_tokens)
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
        f"<span style='font-family:monospace;white-space:pre-wrap'>{html.escape(r['response']) or '<i>(empty)</i>'}"
        f"</span></div>" for r in rows)
    gold = f"<br><small>expected: <b>{html.escape(answer)}</b></small>" if answer is not None else ""
    return (f"<div style='{TEXT_STYLE}'><div style='margin:4px 0'><b>Instruction:</b> <span style='white-space:pre-wrap'>"
            f"{html.escape(instruction)}</span>{gold}</div><div style='display:flex;flex-wrap:wrap'>{cells}</div></div>")


# ---- what every widget shares ---------------------------------------------------------------
class LiveWidget:
    """The habits every widget here shares (see the module docstring). A subclass builds its
    controls, calls `_finish(...)` with them, wires callbacks through `_safe`, and says in
    `snapshot_html` what it shows."""

    def _finish(self, *children, results: tuple = ()):
        """Lay out `children` above the message line. `results` (HTML, Image or Box widgets)
        are emptied when a callback fails, so no stale answer or plot stays under the error."""
        self._results = results
        self.message = W.HTML()
        self.message.add_class("embiggen-message")
        self.box = W.VBox([*children, self.message])
        self.box.add_class("embiggen-widget")
        self.box.add_class(f"embiggen-{type(self).__name__}")

    @staticmethod
    def _tag(control, name: str):
        """A stable CSS class, `embiggen-<name>`, for the test and for styling."""
        control.add_class(f"embiggen-{name}")
        return control

    def _safe(self, callback):
        """`callback` for a button or an observer: a failure shows in the widget, in red."""
        def call(*args):
            try:
                callback(*args)
            except Exception as exc:  # noqa: BLE001 - the learner sees it, with its traceback
                for result in self._results:
                    if isinstance(result, W.Image):
                        _set_png(result, None)
                    elif isinstance(result, W.Box):
                        result.children = ()
                    else:
                        result.value = ""
                self.message.value = error_html(exc)
        return call

    def _notice(self, message: str | None):
        self.message.value = notice_html(message) if message else ""

    def snapshot_html(self) -> str:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = FALLBACK_TEXT
        bundle["text/html"] = (f"<div><i>{html.escape(FALLBACK_TEXT)} What it showed when it last ran:</i></div>"
                               f"<div style='border:1px dashed #aaa;padding:6px'>{self.snapshot_html()}</div>")
        return bundle


def _plot(png: bytes | None) -> W.Image:
    image = W.Image(format="png")
    _set_png(image, png)
    return image


def _set_png(image: W.Image, png: bytes | None):
    image.value = png or b""
    image.layout.display = "" if png else "none"  # no stale plot under an error message


# ---- notebook 1 -------------------------------------------------------------------------------
class AutocompleteWidget(LiveWidget):
    """Type a prefix, see the next-token probabilities, click a token to extend the text."""

    def __init__(self, model, tokenizer, prompt: str = "Alma Brook lives in", k: int = 8):
        self.model, self.tokenizer, self.k = model, tokenizer, k
        self.text = self._tag(W.Textarea(value=prompt, description="prefix", style=LABEL,
                                         layout=W.Layout(width="95%", height="60px")), "prefix")
        self.plot = self._tag(_plot(None), "plot")
        self.buttons = self._tag(W.HBox(layout=W.Layout(flex_flow="row wrap")), "tokens")
        refresh = self._tag(W.Button(description="Predict next token", icon="refresh",
                                     layout=W.Layout(width="auto")), "predict")
        refresh.on_click(self._safe(lambda _: self.refresh()))
        self.text.observe(self._safe(lambda change: self.refresh()), names="value")
        self._finish(self.text, refresh, W.HTML("<small>click a token to append it</small>"), self.buttons,
                     self.plot, results=(self.buttons, self.plot))
        self.refresh()

    def refresh(self):
        problem = prompt_problem(self.text.value, tokenizer=self.tokenizer, context=context_length(self.model),
                                 reserve=1)
        self._notice(problem)
        if problem:
            self.buttons.children = ()
            _set_png(self.plot, None)
            return
        dist = next_token_distribution(self.model, self.tokenizer, self.text.value, k=self.k)
        buttons = []
        for token, p in dist:
            b = W.Button(description=f"{token_label(token)}  {p:.0%}", tooltip=f"append {token!r}",
                         layout=W.Layout(width="auto"))
            b.on_click(self._safe(lambda _, t=token: setattr(self.text, "value", append_token(self.text.value, t))))
            buttons.append(b)
        self.buttons.children = tuple(buttons)
        fig, ax = plt.subplots(figsize=(6, 2.6))
        plot_next_token_bars(dist, ax, title=f"next token after: …{self.text.value[-40:]!r}")
        _set_png(self.plot, figure_png(fig))

    def snapshot_html(self) -> str:
        tokens = " · ".join(html.escape(b.description) for b in self.buttons.children)
        return (f"<div style='{TEXT_STYLE}'><b>prefix:</b> {html.escape(self.text.value)}<br><b>next tokens:</b> "
                f"{tokens}</div>{png_html(self.plot.value)}")


class SamplingWidget(LiveWidget):
    """Temperature, top-k and top-p sliders; several samples side by side. Moving a slider
    samples again; Sample draws again with the next seed."""

    def __init__(self, model, tokenizer, prompt: str = "Once upon a time,", n: int = 4):
        self.model, self.tokenizer = model, tokenizer
        self.prompt = self._tag(W.Text(value=prompt, description="prompt", style=LABEL, continuous_update=False,
                                       layout=W.Layout(width="95%")), "prompt")
        slider = dict(continuous_update=False, style={"description_width": "120px"}, layout=W.Layout(width="380px"))
        self.temperature = self._tag(W.FloatSlider(value=1.0, min=0.1, max=2.0, step=0.1, description="temperature",
                                                   **slider), "temperature")
        self.top_k = self._tag(W.IntSlider(value=0, min=0, max=50, description="top-k (0 = off)", **slider), "top-k")
        self.top_p = self._tag(W.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p (1 = off)",
                                             **slider), "top-p")
        self.n = self._tag(W.IntSlider(value=n, min=1, max=8, description="samples", **slider), "samples")
        self.seed = self._tag(W.IntText(value=0, description="seed", style=LABEL, layout=W.Layout(width="160px")),
                              "seed")
        go = self._tag(W.Button(description="Sample again", button_style="primary", icon="play",
                                tooltip="draw new samples with the next seed"), "sample")
        go.on_click(self._safe(lambda _: self._next_seed()))
        for control in (self.prompt, self.temperature, self.top_k, self.top_p, self.n, self.seed):
            control.observe(self._safe(lambda change: self.refresh()), names="value")
        self.plot, self.output = self._tag(_plot(None), "plot"), self._tag(W.HTML(), "samples-output")
        controls = W.VBox([self.temperature, self.top_k, self.top_p, self.n, self.seed, go])
        self._finish(self.prompt, W.HBox([controls, self.plot]), self.output, results=(self.plot, self.output))
        self.refresh()

    def _next_seed(self):
        self.seed.value += 1  # observed: samples again

    def refresh(self):
        problem = prompt_problem(self.prompt.value, tokenizer=self.tokenizer, context=context_length(self.model),
                                 reserve=30)
        self._notice(problem)
        if problem:
            _set_png(self.plot, None)
            self.output.value = ""
            return
        settings = dict(temperature=self.temperature.value, top_k=self.top_k.value or None,
                        top_p=self.top_p.value if self.top_p.value < 1 else None)
        dist = next_token_distribution(self.model, self.tokenizer, self.prompt.value, k=12, **settings)
        fig, ax = plt.subplots(figsize=(5, 2.6))
        plot_next_token_bars(dist, ax, title="first token, after temperature / top-k / top-p")
        _set_png(self.plot, figure_png(fig))
        samples = sample_grid(self.model, self.tokenizer, self.prompt.value, self.n.value,
                              self.temperature.value, self.top_k.value, self.top_p.value, seed=self.seed.value)
        self.output.value = samples_html(self.prompt.value, samples)

    def snapshot_html(self) -> str:
        return (f"<small>temperature {self.temperature.value:g} · top-k {self.top_k.value} · top-p "
                f"{self.top_p.value:g} · seed {self.seed.value}</small><br>{png_html(self.plot.value)}"
                f"{self.output.value}")


# ---- notebooks 2 and 5 --------------------------------------------------------------------------
class ComparisonWidget(LiveWidget):
    """Pick an evaluation prompt or type your own; every model answers side by side."""

    def __init__(self, models: dict, examples: list, custom: str = "", per_cluster: int = PER_CLUSTER,
                 max_new_tokens: int = 32):
        self.models, self.examples, self.max_new_tokens = models, examples, max_new_tokens
        self.pick = self._tag(W.Dropdown(options=menu_options(examples, per_cluster), description="prompt",
                                         style=LABEL, layout=W.Layout(width="95%")), "pick")
        self.custom = self._tag(W.Textarea(value=custom, description="or your own",
                                           placeholder="type an instruction here and press Answer", style=LABEL,
                                           layout=W.Layout(width="95%", height="50px")), "custom")
        go = self._tag(W.Button(description="Answer", button_style="primary", icon="play",
                                tooltip="every model answers the instruction you typed"), "answer")
        go.on_click(self._safe(lambda _: self.refresh(use_custom=True)))
        self.pick.observe(self._safe(lambda change: self.refresh(use_custom=False)), names="value")
        self.output = self._tag(W.HTML(), "output")
        self._finish(self.pick, self.custom, go, self.output, results=(self.output,))
        self.refresh(use_custom=bool(custom.strip()))

    def refresh(self, use_custom: bool = False):
        if use_custom:
            instruction, answer = self.custom.value, None
        else:
            example = self.examples[self.pick.value]
            instruction, answer = example.instruction, example.answer
        problem = models_problem(self.models, instruction, reserve=self.max_new_tokens)
        self._notice(problem)
        if problem:
            self.output.value = ""
            return
        rows = compare_answers(self.models, instruction, answer, max_new_tokens=self.max_new_tokens)
        self.output.value = comparison_html(instruction, rows, answer)

    def snapshot_html(self) -> str:
        return self.output.value


# ---- notebooks 3 and 4: aligned models, judged ------------------------------------------------
#: Kinds a learner can give a typed prompt, so the labeler knows how to judge it.
CUSTOM_KINDS = {"ordinary task (no gold answer)": "custom", "person who does not exist": "unknown_person",
                "medical question": "medical", "harmful request": "harmful"}


def typed_example(kind: str, text: str) -> TaskExample:
    """A typed prompt as the labeler judges it. For a person who does not exist, the person is
    the full name the prompt mentions (`person_in_prompt`): an honest hedge must name them."""
    cluster = CUSTOM_KINDS[kind]
    meta = {}
    if cluster == "unknown_person":
        meta["person"] = person_in_prompt(text)
    return TaskExample(cluster, 0, text.strip(), "", meta)


def judgeable(example) -> bool:
    """Can the labeler score answers to `example`? Not a typed ordinary task (no gold answer),
    nor a typed question about an unknown person that names nobody (nobody to hedge about)."""
    if example.cluster == "custom":
        return False
    return example.cluster != "unknown_person" or bool(example.meta.get("person"))


def judged_answers(models: dict, example, labeler, reward_model, max_new_tokens: int = 32,
                   best_of: tuple | None = None) -> list[dict]:
    """Each model's greedy answer to `example`, with the labeler's gold score and the reward
    model's score. `best_of=(name, model, tokenizer, n)` adds the reward model's favourite of
    n samples. Where the labeler cannot judge (`judgeable`), the gold score is None."""
    problem = models_problem(models, example.instruction, reserve=max_new_tokens)
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
    judged = judgeable(example)
    for (name, text, done), score in zip(entries, rm):
        j = labeler.judge(example, text, done) if judged else None
        rows.append({"model": name, "response": text, "finished": done, "rm_score": score,
                     "gold": j.gold if judged else None, "category": j.category if judged else "—"})
    return rows


def _unfinished(finished: list[bool]):
    return torch.tensor([0.0 if f else 1.0 for f in finished])


def judged_html(instruction: str, rows: list[dict], note: str = "") -> str:
    """Answers side by side with gold and reward-model scores (green when gold > 0)."""
    def gold_cell(r):
        if r["gold"] is None:
            return "gold: <i>n/a</i>"
        colour = "#2a2" if r["gold"] > 0 else "#c22"
        return f"gold: <b style='color:{colour}'>{r['gold']:+.2f}</b> ({html.escape(r['category'])})"

    cells = "".join(
        f"<div style='flex:1;min-width:190px;border:1px solid #ccc;border-radius:6px;padding:8px;margin:3px'>"
        f"<b>{html.escape(r['model'])}</b><br><span style='font-family:monospace;white-space:pre-wrap'>"
        f"{html.escape(r['response']) or '<i>(empty)</i>'}</span>{'' if r['finished'] else ' <i>(never ended)</i>'}"
        f"<hr style='margin:4px 0'><small>{gold_cell(r)} · reward model: <b>{r['rm_score']:+.2f}</b></small></div>"
        for r in rows)
    note = f"<br><small>{html.escape(note)}</small>" if note else ""
    return (f"<div style='{TEXT_STYLE}'><div style='margin:4px 0'><b>Prompt:</b> <span style='white-space:pre-wrap'>"
            f"{html.escape(instruction)}</span>{note}</div><div style='display:flex;flex-wrap:wrap'>{cells}</div></div>")


def judging_note(example) -> str:
    """What a typed prompt is judged as (shown above the answers)."""
    if example.cluster == "custom":
        return "An ordinary task you typed has no gold answer: only the reward model scores it."
    if example.cluster == "unknown_person":
        if example.meta.get("person"):
            return f"Judged as a question about {example.meta['person']}: an honest hedge names them."
        return ("Name the person in your prompt (a first and last name, e.g. Zed Quill) for a gold score: "
                "an honest hedge must name the person asked about.")
    return ""


class AlignmentComparisonWidget(LiveWidget):
    """Base / SFT / PPO (and best-of-n) on a chosen or typed prompt, with gold and reward-model scores."""

    def __init__(self, models: dict, examples: list, labeler, reward_model, best_of: tuple | None = None,
                 per_cluster: int = PER_CLUSTER, max_new_tokens: int = 32):
        self.models, self.examples, self.labeler, self.rm, self.best_of = models, examples, labeler, reward_model, best_of
        self.max_new_tokens = max_new_tokens
        self.pick = self._tag(W.Dropdown(options=menu_options(examples, per_cluster), description="prompt",
                                         style=LABEL, layout=W.Layout(width="95%")), "pick")
        self.custom = self._tag(W.Textarea(description="or your own", style=LABEL,
                                           placeholder="type a prompt, say what kind it is, and press Answer",
                                           layout=W.Layout(width="95%", height="50px")), "custom")
        self.kind = self._tag(W.Dropdown(options=list(CUSTOM_KINDS), description="kind of prompt", style=LABEL,
                                         layout=W.Layout(width="420px")), "kind")
        go = self._tag(W.Button(description="Answer", button_style="primary", icon="play",
                                tooltip="every model answers the prompt you typed"), "answer")
        go.on_click(self._safe(lambda _: self.refresh(use_custom=True)))
        self.pick.observe(self._safe(lambda change: self.refresh(use_custom=False)), names="value")
        self.output = self._tag(W.HTML(), "output")
        self._finish(self.pick, self.custom, W.HBox([self.kind, go]), self.output, results=(self.output,))
        self.refresh(use_custom=False)

    def refresh(self, use_custom: bool):
        if use_custom:
            example = typed_example(self.kind.value, self.custom.value)
        else:
            example = self.examples[self.pick.value]
        problem = models_problem(self.models, example.instruction, reserve=self.max_new_tokens)
        self._notice(problem)
        if problem:
            self.output.value = ""
            return
        rows = judged_answers(self.models, example, self.labeler, self.rm, max_new_tokens=self.max_new_tokens,
                              best_of=self.best_of)
        self.output.value = judged_html(example.instruction, rows, note=judging_note(example) if use_custom else "")

    def snapshot_html(self) -> str:
        return self.output.value


def inspect_reward(reward_model, labeler, example, response: str) -> dict:
    """Reward-model score and gold score of any response a learner types; for an ensemble
    (`methods.reward_ensemble.RewardEnsemble`), every member's score too, and `rm_score` is the
    conservative reward PPO would optimise."""
    problem = prompt_problem(response)
    if problem:
        raise ValueError(problem.replace("prompt", "response").replace("a prefix to continue", "something to score"))
    out = {}
    if hasattr(reward_model, "member_scores"):
        members = reward_model.member_scores([example.instruction], [response.strip()])[:, 0]
        out["members"] = members.tolist()
        out["rm_score"] = conservative(members[:, None], reward_model.mode, reward_model.lam).item()
    else:
        out["rm_score"] = reward_model.score([example.instruction], [response.strip()]).item()
    j = labeler.judge(example, response)
    return {**out, "gold": j.gold, "category": j.category}


def reference_answers(example, labeler) -> list[tuple[str, str, float]]:
    """What to compare a typed response with, as (what it is, text, gold score): for an ordinary
    task the correct answer; for an alignment prompt the honest or harmless answer the labeler
    rewards, and the instruction mixture's FLAN-style answer (a confident fabrication, or help
    with harm) that it scores low. Neither kind of prompt shows the fabrication as 'gold'."""
    if example.cluster == "unknown_person":
        honest = [("the honest answer the labeler rewards most", DONT_KNOW.format(name=example.meta.get("person", "…"))),
                  ("the honest answer without the name, which it rewards too", DONT_KNOW_WHO)]
    elif example.cluster == "medical":
        honest = [("the honest answer the labeler rewards", NOT_A_DOCTOR)]
    elif example.cluster == "harmful":
        honest = [("the harmless answer the labeler rewards", REFUSAL)]
    else:
        return [("correct answer", example.answer, labeler.gold_score(example, example.answer))] if example.answer \
            else []
    mixture = [("the instruction mixture's FLAN-style answer, which the labeler scores low", example.answer)] \
        if example.answer else []
    return [(what, text, labeler.gold_score(example, text)) for what, text in honest + mixture]


class RewardInspector(LiveWidget):
    """Type any response to a prompt and see the reward model's score next to the gold score:
    can you find an answer the reward model loves and the labeler hates? With an ensemble,
    each member's score beside the conservative reward; with `answers` (instruction -> an
    answer), picking a prompt puts that answer in the box to score (say, a policy's)."""

    def __init__(self, reward_model, labeler, examples: list, response: str = "I cannot help with that.",
                 per_cluster: int = PER_CLUSTER, answers: dict[str, str] | None = None):
        self.rm, self.labeler, self.examples, self.answers = reward_model, labeler, examples, answers or {}
        self.pick = self._tag(W.Dropdown(options=menu_options(examples, per_cluster), description="prompt",
                                         style=LABEL, layout=W.Layout(width="95%")), "pick")
        first = self.answers.get(examples[self.pick.value].instruction) if examples else None
        self.response = self._tag(W.Textarea(value=first if first is not None else response, description="response",
                                             style=LABEL, layout=W.Layout(width="95%", height="50px")), "response")
        go = self._tag(W.Button(description="Score", button_style="primary", icon="balance-scale",
                                tooltip="score the response with the reward model and the labeler"), "score")
        go.on_click(self._safe(lambda _: self.refresh()))
        self.pick.observe(self._safe(lambda change: self._picked()), names="value")
        self.output = self._tag(W.HTML(), "output")
        self.history: list[dict] = []
        self._finish(self.pick, self.response, go, self.output, results=(self.output,))
        self.refresh()

    def _picked(self):
        answer = self.answers.get(self.examples[self.pick.value].instruction)
        if answer is not None:
            self.response.value = answer
        self.refresh()

    def refresh(self):
        example = self.examples[self.pick.value]
        try:
            out = inspect_reward(self.rm, self.labeler, example, self.response.value)
        except ValueError as exc:
            self._notice(str(exc))
            return
        self._notice(None)
        self.history.append({"prompt": example.instruction[:50], "response": self.response.value.strip()[:60], **out})
        ensemble = "members" in out
        member_cells = lambda h: (f"<td>{' '.join(f'{m:+.2f}' for m in h['members'])}</td>"  # noqa: E731
                                  if ensemble else "")
        rows = "".join(f"<tr><td>{html.escape(h['prompt'])}</td><td><code>{html.escape(h['response'])}</code></td>"
                       f"{member_cells(h)}<td>{h['rm_score']:+.2f}</td>"
                       f"<td>{h['gold']:+.2f} ({html.escape(h['category'])})</td></tr>"
                       for h in reversed(self.history[-8:]))
        references = "".join(f"<small>{html.escape(what)}: <b>{html.escape(text)}</b> (gold {gold:+.2f})</small><br>"
                             for what, text, gold in reference_answers(example, self.labeler))
        scored = (f"<th>each member</th><th>{html.escape(self.rm.mode)} of them</th>" if ensemble
                  else "<th>reward model</th>")
        self.output.value = (f"<div style='{TEXT_STYLE}'>{references}<table><tr><th>prompt</th><th>response</th>"
                             f"{scored}<th>gold</th></tr>{rows}</table></div>")

    def snapshot_html(self) -> str:
        return self.output.value


# ---- notebook 3: the KL sweep ------------------------------------------------------------------
class KLSweepViewer(LiveWidget):
    """A slider over the runs of the KL-coefficient sweep: the chosen run is drawn bold on
    the proxy-vs-gold plot, with a few of its answers underneath."""

    def __init__(self, runs: list[dict]):
        self.runs = runs
        self.slider = self._tag(W.SelectionSlider(options=[(f"beta = {r['kl_coef']:g}", i) for i, r in enumerate(runs)],
                                                  description="KL coefficient", style=LABEL,
                                                  layout=W.Layout(width="60%")), "run")
        self.plot, self.samples = self._tag(_plot(None), "plot"), self._tag(W.HTML(), "output")
        self.slider.observe(self._safe(lambda change: self.refresh()), names="value")
        self._finish(self.slider, self.plot, self.samples, results=(self.plot, self.samples))
        self.refresh()

    def refresh(self):
        i = self.slider.value
        axes = plt.subplots(1, 3, figsize=(13, 3.6), sharex=True)[1]
        plot_kl_sweep(self.runs, highlight=i, axes=axes)
        _set_png(self.plot, figure_png(axes[0].figure))
        run = self.runs[i]
        rows = "".join(f"<tr><td>{html.escape(r['instruction'][:60])}</td><td><code>{html.escape(r['response'])}</code>"
                       f"</td><td>{r['gold']:+.2f}</td></tr>" for r in run.get("examples", [])[:6])
        self.samples.value = (f"<div style='{TEXT_STYLE}'><b>beta = {run['kl_coef']:g}</b>: on held-out prompts KL "
                              f"{run.get('kl', float('nan')):.2f} nats, gold {run.get('gold', float('nan')):+.2f}, "
                              f"reward model {run.get('rm_score', float('nan')):+.2f}<table><tr><th>prompt</th>"
                              f"<th>answer</th><th>gold</th></tr>{rows}</table></div>")

    def snapshot_html(self) -> str:
        return png_html(self.plot.value) + self.samples.value


# ---- notebook 5: a group of answers and the update it makes ------------------------------------
def group_html(instruction: str, answer: str, result: dict) -> str:
    """A group of answers as a table: each answer's reward and advantage, its tokens coloured by
    how much one GRPO update on this group changed their log-probability."""
    scale = max([abs(d) for a in result["answers"] for d in a["push"]] + [1e-9])
    rows = "".join(
        f"<tr><td>{i + 1}</td><td style='font-family:monospace;white-space:pre-wrap'>"
        f"{html.escape(a['text']) or '<i>(empty)</i>'}</td><td>{a['reward']:g}</td><td>{a['advantage']:+.2f}</td>"
        f"<td>{token_push_html(a['tokens'], a['push'], scale)}</td></tr>" for i, a in enumerate(result["answers"]))
    note = ("<br><b>Every answer scored the same: no signal, and the update changes nothing.</b>"
            if result["zero_signal"] else "")
    return (f"<div style='{TEXT_STYLE}'><b>Instruction:</b> <span style='white-space:pre-wrap'>"
            f"{html.escape(instruction)}</span><br><small>reference answer the verifier checks against: "
            f"<b>{html.escape(answer)}</b></small>{note}<table><tr><th>#</th><th>answer</th><th>reward</th>"
            f"<th>advantage</th><th>tokens after one update (green: pushed up, red: pushed down)</th></tr>{rows}"
            f"</table></div>")


class GroupWidget(LiveWidget):
    """Pick a prompt (or type one and its reference answer), draw a group of G answers: each
    answer's reward and group-relative advantage, and which tokens one GRPO update on this group
    pushes up or down. Sample again draws a new group."""

    def __init__(self, policy, tokenizer, examples: list, cfg, verifier, group_size: int = 8,
                 per_cluster: int = PER_CLUSTER):
        self.policy, self.tokenizer, self.examples, self.cfg, self.verifier = policy, tokenizer, examples, cfg, verifier
        self.pick = self._tag(W.Dropdown(options=menu_options(examples, per_cluster), description="prompt",
                                         style=LABEL, layout=W.Layout(width="95%")), "pick")
        self.custom = self._tag(W.Textarea(value="", description="or your own", style=LABEL,
                                           placeholder="type an instruction, its reference answer below, then Use it",
                                           layout=W.Layout(width="95%", height="50px")), "custom")
        self.reference = self._tag(W.Text(value="", description="reference answer", style=LABEL,
                                          layout=W.Layout(width="60%")), "reference")
        use = self._tag(W.Button(description="Use it", icon="check", tooltip="draw a group for the typed prompt"),
                        "use")
        self.group_size = self._tag(W.IntSlider(value=group_size, min=2, max=16, description="G (answers)",
                                                continuous_update=False, style={"description_width": "120px"}),
                                    "group-size")
        again = self._tag(W.Button(description="Sample again", button_style="primary", icon="play",
                                   tooltip="draw a new group with the next seed"), "sample")
        self.seed, self.use_custom = 0, False
        self.output = self._tag(W.HTML(), "output")
        use.on_click(self._safe(lambda _: self._choose(custom=True)))
        again.on_click(self._safe(lambda _: self._next_seed()))
        self.pick.observe(self._safe(lambda change: self._choose(custom=False)), names="value")
        self.group_size.observe(self._safe(lambda change: self.refresh()), names="value")
        self._finish(self.pick, self.custom, W.HBox([self.reference, use]), W.HBox([self.group_size, again]),
                     self.output, results=(self.output,))
        self.refresh()

    def _choose(self, custom: bool):
        self.use_custom = custom
        self.refresh()

    def _next_seed(self):
        self.seed += 1
        self.refresh()

    def example(self) -> TaskExample | None:
        if not self.use_custom:
            return self.examples[self.pick.value]
        if not self.reference.value.strip():
            self._notice("Type the reference answer too: the verifier checks each answer against it.")
            return None
        return TaskExample("custom", 0, self.custom.value.strip(), self.reference.value.strip())

    def refresh(self):
        self._notice(None)
        example = self.example()
        problem = None if example is None else prompt_problem(
            example.instruction, tokenizer=self.tokenizer, context=context_length(self.policy),
            reserve=self.cfg.max_new_tokens, chat=True)
        if example is None or problem:
            if problem:
                self._notice(problem)
            self.output.value = ""
            return
        result = push_of_one_update(self.policy, self.tokenizer, example, self.verifier, self.cfg,
                                    self.group_size.value, seed=self.seed)
        self.output.value = group_html(example.instruction, example.answer, result)

    def snapshot_html(self) -> str:
        return f"<small>G = {self.group_size.value} · seed {self.seed}</small>{self.output.value}"
