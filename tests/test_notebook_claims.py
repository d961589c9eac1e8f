"""Every figure the notebooks' prose states is one their executed outputs print.

A percentage ("46%") or a decimal ("1.39 nats") in a markdown cell must match, at the precision
the prose gives, a number printed by a code cell *above* it in the same notebook (a rate printed
as 0.4639 or 46.4% supports "46%"). Numbers inside formulas ($...$) and code spans are
definitions, not claims, and are skipped; so are a paper's own figures, in a sentence that cites
the paper (an "et al.", a year, or the name of a model the papers report on). When a notebook is
re-executed and a number moves, this test names the sentence to rewrite.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").rglob("*.ipynb"))

PERCENT = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s?%")
DECIMAL = re.compile(r"(?<![\w.$])(\d+\.\d+)(?![\w%.]|\s?%)")
NUMBER = re.compile(r"(?<![\w.])-?(\d+(?:\.\d+)?)(\s?%)?")
SKIP = re.compile(r"\$[^$]*\$|`[^`]*`|\]\([^)]*\)|https?://\S+")  # formulas, code, link targets
SENTENCE = re.compile(r"(?<=[.!?:;])\s+(?=[A-Z*(])|\n\s*\n|\n\s*[-*] ")
CITED = re.compile(r"et al\.|\b(19|20)\d\d\b|InstructGPT|ChatGPT|GPT-[234]|Flan-PaLM|\bFLAN\b|\bPaLM\b|Anthropic|OpenAI")


def text_of(output: dict) -> str:
    parts = [output.get("text", "")]
    for mime in ("text/plain", "text/html", "text/markdown"):
        parts.append(output.get("data", {}).get(mime, ""))
    return " ".join("".join(p) if isinstance(p, list) else p for p in parts)


def printed_values(text: str) -> set[float]:
    """Every number in printed output, and for a number in [0, 1] also the percentage it is."""
    values = set()
    for match in NUMBER.finditer(text.replace(",", "")):
        value = float(match.group(1))
        values.add(value)
        if not match.group(2) and value <= 1:
            values.add(value * 100)
    return values


def supported(claim: str, values: set[float]) -> bool:
    decimals = len(claim.split(".")[1]) if "." in claim else 0
    target = float(claim)
    return any(abs(round(v, decimals) - target) < 1e-9 or abs(v - target) < 0.5 * 10 ** -decimals for v in values)


def claims(markdown: str) -> list[str]:
    out = []
    for sentence in SENTENCE.split(SKIP.sub(" ", markdown)):
        if sentence and not CITED.search(sentence):
            out += [m.group(1) for m in PERCENT.finditer(sentence)] + [m.group(1) for m in DECIMAL.finditer(sentence)]
    return out


def unsupported_claims(nb: dict) -> list[str]:
    values: set[float] = set()
    missing = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            for output in cell.get("outputs", []):
                values |= printed_values(text_of(output))
        elif cell["cell_type"] == "markdown":
            source = "".join(cell["source"])
            missing += [f"cell {i}: {c} in {source[:80]!r}" for c in claims(source) if not supported(c, values)]
    return missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_in_the_prose_is_printed_above_it(path):
    assert not unsupported_claims(json.loads(path.read_text())), "prose numbers no output above prints"


def test_the_checker_catches_a_typed_number():
    def nb(prose, printed):
        return {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "text": printed}]},
                          {"cell_type": "markdown", "source": prose}]}

    assert unsupported_claims(nb("Honest in 46% of answers, KL 1.39.", "honest 0.4639 | kl 1.3858")) == []
    assert unsupported_claims(nb("Accuracy 90.2%.", "accuracy: 90.2%")) == []
    assert len(unsupported_claims(nb("Honest in 52% of answers.", "honest 0.4639"))) == 1
    assert len(unsupported_claims(nb("KL 1.42 nats.", "kl 1.3858"))) == 1
    assert unsupported_claims(nb("With $\\beta = 0.1$ and `lr=3e-5`.", "")) == []
    assert unsupported_claims(nb("InstructGPT's labelers agreed on 73% of pairs. Ours: 12%.", "12%")) == []
    assert len(unsupported_claims(nb("Wei et al. (2021) is cited. Ours: 12%.", "13%"))) == 1
    # a number printed only *below* the prose does not support it
    below = {"cells": [{"cell_type": "markdown", "source": "Honest in 46%."},
                       {"cell_type": "code", "outputs": [{"output_type": "stream", "text": "0.46"}]}]}
    assert len(unsupported_claims(below)) == 1
