"""The tools a model may call, and the strict runtime that runs them (notebook 6).

Plain functions of a string, no model anywhere: `embiggen.methods.tools` teaches a model to call
them; `embiggen.data.splits` writes the demonstrations with them. The runtime is strict, as any
code that runs what a model wrote must be: only the tools in `TOOLS`, arguments parsed by a
regular expression (never ``eval``), and a call that does not parse — an unknown tool,
arguments in the wrong shape — gets ``error`` as its result and an explanation for the
reader in `ToolCall.error`; it never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

#: The task clusters whose demonstrations call a tool.
TOOL_CLUSTERS = ("arithmetic", "counting")
#: What the model writes to hand over to the runtime: ``[name(arguments) ->``.
CALL_END = "->"
CALL = re.compile(r"\[(?P<name>[A-Za-z_]\w*)\((?P<args>[^\[\]]*)\)\s*->$")
#: A whole call with its result, as it stands in a finished response.
CALL_WITH_RESULT = re.compile(r"\[[A-Za-z_]\w*\([^\[\]]*\)\s*->[^\[\]]*\]")
ERROR = "error"


# ---------------------------------------------------------------------------------------
# The tools: plain functions of a string; a ToolError is a malformed call
# ---------------------------------------------------------------------------------------
class ToolError(ValueError):
    """A call the tool cannot run; its message is for the reader."""


ARITHMETIC = re.compile(r"^\s*(-?\d{1,12})\s*([-+*])\s*(-?\d{1,12})\s*$")


def calc(args: str, message: str = "") -> str:
    """A calculator for ``<integer> <+ | - | *> <integer>``: ``calc(57 + 38)`` -> ``95``."""
    match = ARITHMETIC.match(args)
    if not match:
        raise ToolError(f"calc takes '<integer> <+|-|*> <integer>', got {args!r}")
    a, op, b = int(match[1]), match[2], int(match[3])
    return str(a + b if op == "+" else a - b if op == "-" else a * b)


LIST = re.compile(r"[A-Za-z]+(?:, [A-Za-z]+)+")


def count(args: str, message: str = "") -> str:
    """A counter: how often a word occurs in a comma-separated list. ``count(apples; milk,
    apples, tea)`` names the list; ``count(apples)`` counts in the list the user's message
    holds (its longest comma-separated run) — a tool that reads the conversation, as real
    tools read the file or page they are handed, so the model need not copy the list (a 1M-
    parameter model copies "tea, tea, tea, tea" with a tea too many or too few)."""
    if args.count(";") > 1:
        raise ToolError(f"count takes '<word>' or '<word>; <item>, <item>, ...', got {args!r}")
    word, _, items = (part.strip().lower() for part in args.partition(";"))
    if not word or " " in word:
        raise ToolError(f"count needs one word to count, got {args!r}")
    if not items:
        lists = LIST.findall(message)
        if not lists:
            raise ToolError(f"count({word}) counts in a comma-separated list of the user's message, which has none")
        items = max(lists, key=len).lower()
    return str(sum(item.strip() == word for item in items.split(",")))


#: The tools a model may call, by name. Add one here (and demonstrations of it) to teach it.
TOOLS = {"calc": calc, "count": count}


@dataclass
class ToolCall:
    name: str
    args: str
    result: str
    error: str | None = None  # why the call failed, for the reader; None if it ran


def run_call(text: str, tools: dict = TOOLS, message: str = "") -> ToolCall:
    """Run the call at the end of `text` (which ends with ``->``); `message` is the user's
    message, which a tool may read. Never raises: a malformed call or an unknown tool returns
    a ToolCall whose result is ``error``."""
    match = CALL.search(text[text.rfind("["):] if "[" in text else text)
    if match is None:
        tail = text[text.rfind("["):] if "[" in text else text[-40:]
        return ToolCall("?", tail, ERROR, f"not a call of the form [name(arguments) ->: {tail!r}")
    name, args = match["name"], match["args"]
    if name not in tools:
        return ToolCall(name, args, ERROR, f"unknown tool {name!r}; the tools are {', '.join(tools)}")
    try:
        return ToolCall(name, args, tools[name](args, message))
    except ToolError as exc:
        return ToolCall(name, args, ERROR, str(exc))


def strip_calls(response: str) -> str:
    """The answer a reader sees: the response without its calls (and their results)."""
    return re.sub(r"\s+", " ", CALL_WITH_RESULT.sub(" ", response)).strip()


# ---------------------------------------------------------------------------------------
# Demonstrations: a task answered with a call first
# ---------------------------------------------------------------------------------------
def with_call(name: str, args: str, answer: str, message: str = "", tools: dict = TOOLS) -> str:
    """A demonstration's response: the call, its result, then the answer as before."""
    return f"[{name}({args}) {CALL_END} {tools[name](args, message)}] {answer}"


def tool_demonstration(example):
    """An arithmetic or counting TaskExample answered with a call first:
    "Compute 57 + 38." -> "[calc(57 + 38) -> 95] 57 plus 38 is 95.", "Count the tea in: tea,
    jam, tea." -> "[count(tea) -> 2] 2"."""
    meta = example.meta
    if example.cluster == "arithmetic":
        name, args = "calc", f"{meta['a']} {meta['op']} {meta['b']}"
    elif example.cluster == "counting":
        name, args = "count", meta["thing"]
    else:
        raise ValueError(f"no tool demonstrations for the {example.cluster!r} cluster (only arithmetic, counting)")
    return replace(example, answer=with_call(name, args, example.answer, example.instruction))
