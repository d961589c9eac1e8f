"""Tool use: the model writes a call, a program runs it, the result is spliced back in.

Toolformer (Schick et al. 2023, https://arxiv.org/abs/2302.04761) taught a language model to
write API calls inside its own text,

    [calc(57 + 38) -> 95] 57 plus 38 is 95.

The model writes ``[calc(57 + 38) ->``; generation pauses there; the runtime parses the call,
runs the tool and appends `` 95]``; the model goes on, now able to copy the answer instead of
computing it. Toolformer found its calls by letting the model propose them and keeping those
that lowered the loss on the following text; our world is synthetic, so we write the
demonstrations directly and fine-tune the instruction-tuned model on them (section 2 of
notebook 6): arithmetic and counting — the cluster a 1M-parameter model cannot learn — with
calls, the other clusters as before.

The loss is the SFT loss, except that the tool's result is never a target:

    L(theta) = - sum_{t in response, t not in a result} log p_theta(x_t | x_<t)  /  |those tokens|

the model is taught *when* to call and *what to do with* the result, not to guess the result.

The runtime is strict, as any code that runs what a model wrote must be: only the tools in
`TOOLS`, arguments parsed by a regular expression (never ``eval``), and a call that does
not parse — an unknown tool, arguments in the wrong shape — gets ``error`` as its result (a
token the model sees) and an explanation for the reader in `ToolCall.error`; it never raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from embiggen.data.toolbox import CALL_END, CALL_WITH_RESULT, TOOLS, ToolCall, run_call, strip_calls
from embiggen.judging.evaluate import exact_match
from embiggen.lm.generate import plain_generation
from embiggen.lm.tokenizer import chat_prompt, encode
from embiggen.methods.sft import IGNORE_INDEX


# ---------------------------------------------------------------------------------------
# Demonstrations' encoding: the results are not targets
# ---------------------------------------------------------------------------------------
def response_pieces(response: str) -> list[tuple[str, bool]]:
    """Split a response into (text, is a target) pieces: each call's result (`` 95]``) is not
    a target; everything the model writes, the call itself included, is."""
    pieces, start = [], 0
    for match in CALL_WITH_RESULT.finditer(response):
        arrow = response.index(CALL_END, match.start()) + len(CALL_END)
        pieces += [(response[start:arrow], True), (response[arrow:match.end()], False)]
        start = match.end()
    pieces.append((response[start:], True))
    return [(text, target) for text, target in pieces if text]


def encode_tool_example(tokenizer, instruction: str, response: str, max_length: int = 256) -> dict:
    """`sft.encode_example` for responses with calls: each piece tokenised on its own — as at
    run time, when the runtime appends the result's tokens to the ones the model wrote — and
    the results' tokens labelled -100."""
    prompt_ids = encode(tokenizer, chat_prompt(tokenizer, instruction))
    ids, labels = list(prompt_ids), [IGNORE_INDEX] * len(prompt_ids)
    for text, target in response_pieces(response):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if target else [IGNORE_INDEX] * len(piece)
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


# ---------------------------------------------------------------------------------------
# Generation with tools: pause at "->", run the call, splice its result, go on
# ---------------------------------------------------------------------------------------
class StopAtCall(StoppingCriteria):
    """Stops each row of a batch, on its own, once its new text ends with ``->``."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        if input_ids.shape[1] <= self.prompt_len:
            return torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        tails = self.tokenizer.batch_decode(input_ids[:, max(self.prompt_len, input_ids.shape[1] - 4):])
        return torch.tensor([t.endswith(CALL_END) for t in tails], device=input_ids.device)


@dataclass
class Transcript:
    """One answer written with tools: the full response (calls and results included), the
    answer a reader sees (calls stripped), the calls made, and whether it ended with EOS."""
    response: str
    answer: str
    calls: list[ToolCall] = field(default_factory=list)
    finished: bool = False

    @property
    def errors(self) -> list[str]:
        return [c.error for c in self.calls if c.error]


@torch.no_grad()
def generate_with_tools(model, tokenizer, instructions: list[str], tools: dict | None = TOOLS,
                        max_new_tokens: int = 64, max_calls: int = 3, batch_size: int = 64) -> list[Transcript]:
    """Greedy answers to `instructions` in which calls are run: each row generates until EOS
    or ``->``; a row that stopped at a call gets the result's tokens appended and generates on
    (at most `max_calls` calls; `max_new_tokens` counts the model's tokens, not the results').
    ``tools=None`` runs no tool at all: generation just goes on after ``->`` (the model then
    has to guess the result), which shows what the runtime adds."""
    if isinstance(instructions, str):
        raise TypeError("generate_with_tools takes a list of instructions")
    out = []
    for start in range(0, len(instructions), batch_size):
        out += _generate_batch(model, tokenizer, instructions[start: start + batch_size], tools, max_new_tokens,
                               max_calls)
    return out


def _generate_batch(model, tokenizer, instructions, tools, max_new_tokens, max_calls) -> list[Transcript]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    stop_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    rows = [{"ids": encode(tokenizer, chat_prompt(tokenizer, x)), "message": x, "new": [], "written": 0, "calls": [],
             "done": False, "finished": False} for x in instructions]
    while True:
        active = [r for r in rows if not r["done"]]
        if not active:
            break
        budget = max(max_new_tokens - r["written"] for r in active)
        width = max(len(r["ids"]) for r in active)
        pad = [width - len(r["ids"]) for r in active]  # left padding
        ids = torch.tensor([[tokenizer.pad_token_id] * p + r["ids"] for p, r in zip(pad, active)], device=device)
        mask = torch.tensor([[0] * p + [1] * len(r["ids"]) for p, r in zip(pad, active)], device=device)
        stopping = StoppingCriteriaList([StopAtCall(tokenizer, width)]) if tools is not None else None
        with plain_generation(model):
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                       stopping_criteria=stopping)[:, width:].tolist()
        for row, new in zip(active, generated):
            new = new[: max_new_tokens - row["written"]]
            ended = next((i for i, t in enumerate(new) if t in stop_ids), None)
            row["finished"] = ended is not None and new[ended] == tokenizer.eos_token_id
            new = new if ended is None else new[:ended]
            row["ids"] += new
            row["new"] += new
            row["written"] += len(new)
            text = tokenizer.decode(row["new"], skip_special_tokens=False)
            if tools is not None and text.endswith(CALL_END) and len(row["calls"]) < max_calls \
                    and row["written"] < max_new_tokens:
                call = run_call(text, tools, row["message"])
                row["calls"].append(call)
                result = tokenizer(f" {call.result}]", add_special_tokens=False)["input_ids"]
                row["ids"] += result
                row["new"] += result
                row["finished"] = False
            else:
                row["done"] = True
    model.train(was_training)
    transcripts = []
    for row in rows:
        response = tokenizer.decode(row["new"], skip_special_tokens=False).strip()
        transcripts.append(Transcript(response, strip_calls(response), row["calls"], row["finished"]))
    return transcripts


# ---------------------------------------------------------------------------------------
# Evaluation: the same exact-match scorer as every task, on the answer a reader sees
# ---------------------------------------------------------------------------------------
def evaluate_with_tools(model, tokenizer, examples, tools: dict | None = TOOLS, max_new_tokens: int = 64,
                        max_calls: int = 3, batch_size: int = 64) -> dict:
    """Answers written with tools, scored by `evaluate.exact_match` on the answer without its
    calls (the gold answers have none): accuracy overall and per cluster, the share of answers
    that made a call, the share of calls that failed (`malformed_call_rate`), and one row per
    prompt for the widgets."""
    transcripts = generate_with_tools(model, tokenizer, [e.instruction for e in examples], tools, max_new_tokens,
                                      max_calls, batch_size)
    rows, by_cluster = [], {}
    for e, t in zip(examples, transcripts):
        ok = exact_match(t.answer, e.answer)
        rows.append({"cluster": e.cluster, "template": e.template, "instruction": e.instruction, "answer": e.answer,
                     "response": t.response, "shown": t.answer, "correct": ok, "calls": len(t.calls),
                     "errors": "; ".join(t.errors)})
        by_cluster.setdefault(e.cluster, []).append(ok)
    calls = [c for t in transcripts for c in t.calls]
    return {"accuracy": sum(r["correct"] for r in rows) / max(1, len(rows)),
            "per_cluster": {c: sum(v) / len(v) for c, v in by_cluster.items()},
            "call_rate": sum(bool(t.calls) for t in transcripts) / max(1, len(transcripts)),
            "n_calls": len(calls),
            "malformed_call_rate": sum(c.error is not None for c in calls) / max(1, len(calls)),
            "transcripts": transcripts, "rows": rows}
