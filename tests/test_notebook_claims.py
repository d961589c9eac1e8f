"""Every figure the notebooks' prose states is one their executed outputs print.

A claim is a number in a markdown cell with a unit (46%, 42 s, 25 ms, 1.39 nats, 3×, 2 min) or with a decimal point
(0.589). It must match, at the precision the prose gives, a number printed by a code cell *above* it in the same
notebook, in the same unit or with none: a rate printed as 0.4639 or 46.4% supports "46%", "42 s" is not supported by
a printed "42%", and "150 ms" is supported by "0.15 s". "About", "around", "roughly" (and "~") allow 10%.

A figure quoted from elsewhere is checked against where it comes from: a sentence that names "notebook N" may quote
any output of notebook N, one that names the report card (report.json) a figure of `docs/report-laptop.json`, and one
that names COURSE.md a number COURSE.md states. A solutions notebook may also quote the outputs of the notebook it
solves. Numbers inside formulas ($...$) and code spans are definitions, not claims, and are skipped; so are a paper's
own figures, in a sentence that cites the paper (an "et al.", a year, or the name of a model the papers report on).
When a notebook is re-executed and a number moves, this test names the sentence to rewrite.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))

UNIT = r"(%|ms|s|seconds?|min|minutes?|nats?|×)"
CLAIM = re.compile(r"(?<![\w.$-])(~\s?)?(\d[\d,]*(?:\.\d+)?)(?:\s?" + UNIT + r"(?![\w]))?")
PRINTED = re.compile(r"(?<![\w.])-?(\d+(?:\.\d+)?(?:e-?\d+)?)(?:\s?" + UNIT + r"(?![a-zA-Z]))?")
SKIP = re.compile(r"\$[^$]*\$|`[^`]*`|\]\([^)]*\)|https?://\S+")  # formulas, code, link targets
SENTENCE = re.compile(r"(?<=[.!?:;])\s+(?=[A-Z*(])|\n\s*\n|\n\s*[-*] |\n\s*\d+\. ")
CITED = re.compile(r"et al\.|\b(19|20)\d\d\b|InstructGPT|ChatGPT|GPT-[234]|Flan-PaLM|\bFLAN\b|\bPaLM\b|Anthropic|OpenAI")
APPROXIMATE = re.compile(r"(about|around|roughly|nearly|almost|approximately)\s+$")
NOTEBOOK_REF = re.compile(r"\bnotebooks?\s+(\d)\b", re.I)
REPORT_REF = re.compile(r"report card|report\.json|the report\b", re.I)
COURSE_REF = re.compile(r"COURSE\.md")
SOLVES = re.compile(r"^(\d\d)_.*_solutions\.ipynb$")


def unit_of(text: str | None) -> str | None:
    if not text:
        return None
    return {"%": "%", "ms": "ms", "×": "×", "min": "min"}.get(text) or {"s": "s", "n": "nat", "m": "min"}[text[0]]


def text_of(output: dict) -> str:
    parts = [output.get("text", "")]
    for mime in ("text/plain", "text/html", "text/markdown"):
        parts.append(output.get("data", {}).get(mime, ""))
    return " ".join("".join(p) if isinstance(p, list) else p for p in parts)


def printed_values(text: str) -> set[tuple[float, str | None]]:
    """Every number printed, with its unit (None when it has none). A unitless number in [0, 1] is also the
    percentage it is, seconds are also milliseconds and the other way round, minutes are also seconds."""
    values = set()
    for match in PRINTED.finditer(text.replace(",", "")):
        try:
            value = float(match.group(1))
        except ValueError:
            continue
        unit = unit_of(match.group(2))
        values.add((value, unit))
        if unit is None and value <= 1:
            values.add((value * 100, "%"))
        if unit == "s":
            values.add((value * 1000, "ms"))
        if unit == "ms":
            values.add((value / 1000, "s"))
        if unit == "min":
            values.add((value * 60, "s"))
    return values


def numbers_in(text: str) -> set[tuple[float, str | None]]:
    """The numbers a document states (COURSE.md, report.json), each also unitless, so any claim can match them."""
    return {(v, None) for v, _ in printed_values(text)} | printed_values(text)


def report_values() -> set[tuple[float, str | None]]:
    values = set()

    def walk(x):
        if isinstance(x, bool):
            return
        if isinstance(x, (int, float)):
            values.update({(float(x), None), (float(x) * 100, "%")})
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    path = ROOT / "docs" / "report-laptop.json"
    if path.exists():
        walk(json.loads(path.read_text()))
    return values


def supported(claim: str, unit: str | None, values: set[tuple[float, str | None]], approximate: bool = False) -> bool:
    claim = claim.replace(",", "")
    decimals = len(claim.split(".")[1]) if "." in claim else 0
    target = float(claim)
    slack = max(0.5 * 10 ** -decimals, 0.1 * abs(target) if approximate else 0.0)
    for value, printed_unit in values:
        if printed_unit is not None and unit is not None and printed_unit != unit:
            continue
        if abs(round(value, decimals) - target) < 1e-9 or abs(value - target) <= slack + 1e-12:
            return True
    return False


def claims(markdown: str) -> list[tuple[str, str, str | None, bool]]:
    """(sentence, number, unit, approximate) for every claim in a markdown cell."""
    out = []
    for sentence in SENTENCE.split(SKIP.sub(" ", markdown)):
        if not sentence or CITED.search(sentence):
            continue
        for m in CLAIM.finditer(sentence):
            number, unit = m.group(2), unit_of(m.group(3))
            if unit is None and "." not in number:
                continue  # a bare integer (a step count, a table's size) is not a measured claim
            if number.endswith(".") or (unit is None and sentence[m.end():m.end() + 1].isalpha()):
                continue  # "0.5B parameters", "3e-5": a size or a setting written as a word, not a measured figure
            approximate = bool(m.group(1)) or bool(APPROXIMATE.search(sentence[: m.start()]))
            out.append((sentence, number, unit, approximate))
    return out


def notebook_outputs(nb: dict) -> set[tuple[float, str | None]]:
    values = set()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            for output in cell.get("outputs", []):
                values |= printed_values(text_of(output))
    return values


class Sources:
    """What a sentence that names another notebook, the report card or COURSE.md may quote."""

    def __init__(self, notebooks: dict[str, dict] | None = None, report=None, course: str = ""):
        self.by_number = {}
        for name, nb in (notebooks or {}).items():
            if name[:2].isdigit() and name[2] == "_" and not name.endswith("_solutions.ipynb"):  # 03b is no "notebook 3"
                self.by_number[int(name[:2])] = notebook_outputs(nb)
        self.report = report if report is not None else set()
        self.course = numbers_in(course)

    @classmethod
    def of_repository(cls):
        notebooks = {p.name: json.loads(p.read_text()) for p in NOTEBOOKS}
        course = ROOT / "COURSE.md"
        return cls(notebooks, report_values(), course.read_text() if course.exists() else "")

    def for_sentence(self, sentence: str) -> set[tuple[float, str | None]]:
        values = set()
        for n in NOTEBOOK_REF.findall(sentence):
            values |= self.by_number.get(int(n), set())
        if REPORT_REF.search(sentence):
            values |= self.report
        if COURSE_REF.search(sentence):
            values |= self.course
        return values


def unsupported_claims(nb: dict, sources: Sources | None = None, solves: int | None = None) -> list[str]:
    sources = sources or Sources()
    values: set[tuple[float, str | None]] = set(sources.by_number.get(solves, set())) if solves else set()
    missing = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            for output in cell.get("outputs", []):
                values |= printed_values(text_of(output))
        elif cell["cell_type"] == "markdown":
            for sentence, number, unit, approximate in claims("".join(cell["source"])):
                if not supported(number, unit, values | sources.for_sentence(sentence), approximate):
                    missing.append(f"cell {i}: {number}{' ' + unit if unit else ''} in {sentence.strip()[:100]!r}")
    return missing


@pytest.fixture(scope="module")
def sources():
    return Sources.of_repository()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_in_the_prose_is_printed_above_it(path, sources):
    solved = SOLVES.match(path.name)
    missing = unsupported_claims(json.loads(path.read_text()), sources, int(solved.group(1)) if solved else None)
    assert not missing, "prose figures that no output above (or the source the sentence names) prints:\n" + \
        "\n".join(missing)


def nb_of(prose, printed):
    return {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "text": printed}]},
                      {"cell_type": "markdown", "source": prose}]}


def test_the_checker_matches_numbers_with_their_units():
    assert unsupported_claims(nb_of("Honest in 46% of answers, KL 1.39 nats.", "honest 0.4639 | kl 1.3858")) == []
    assert unsupported_claims(nb_of("Accuracy 90.2%.", "accuracy: 90.2%")) == []
    assert unsupported_claims(nb_of("It took 42 s, 150 ms a step.", "42.3 s | 0.15 s per step")) == []
    assert unsupported_claims(nb_of("It took about 20 s.", "18.7 s")) == []
    assert unsupported_claims(nb_of("It is 3× faster.", "3.04×")) == []
    assert unsupported_claims(nb_of("With $\\beta = 0.1$ and `lr=3e-5`, for 300 steps.", "")) == []
    assert unsupported_claims(nb_of("InstructGPT's labelers agreed on 73% of pairs. Ours: 12%.", "12%")) == []
    # wrong numbers, and right numbers in the wrong unit, are caught
    assert len(unsupported_claims(nb_of("Honest in 52% of answers.", "honest 0.4639"))) == 1
    assert len(unsupported_claims(nb_of("KL 1.42 nats.", "kl 1.3858"))) == 1
    assert len(unsupported_claims(nb_of("Training took 42 s.", "accuracy 42%"))) == 1
    assert len(unsupported_claims(nb_of("It took 20 s.", "18.7 s"))) == 1  # no "about": rounding only
    assert len(unsupported_claims(nb_of("Wei et al. (2021) is cited. Ours: 12%.", "13%"))) == 1
    # a number printed only *below* the prose does not support it
    below = {"cells": [{"cell_type": "markdown", "source": "Honest in 46%."},
                       {"cell_type": "code", "outputs": [{"output_type": "stream", "text": "0.46"}]}]}
    assert len(unsupported_claims(below)) == 1


def test_a_figure_quoted_from_elsewhere_is_checked_against_its_source():
    other = {"03_x.ipynb": nb_of("", "reward model accuracy 80.6%")}
    sources = Sources(other, report={(0.589, None)}, course="Notebook 1 takes about 15 minutes.")
    assert unsupported_claims(nb_of("Notebook 3's reward model was right on 80.6%.", ""), sources) == []
    assert len(unsupported_claims(nb_of("Notebook 3's reward model was right on 77.1%.", ""), sources)) == 1
    assert len(unsupported_claims(nb_of("Notebook 2's reward model was right on 80.6%.", ""), sources)) == 1
    assert unsupported_claims(nb_of("The report card gives a loss of 0.589.", ""), sources) == []
    assert unsupported_claims(nb_of("Reading takes 15 minutes (COURSE.md).", ""), sources) == []
    assert len(unsupported_claims(nb_of("Reading takes 25 minutes (COURSE.md).", ""), sources)) == 1
    # a solutions notebook may quote the notebook it solves
    assert unsupported_claims(nb_of("The notebook's 80.6% rises.", ""), sources, solves=3) == []


def test_a_planted_mismatch_in_a_real_notebook_is_caught(sources):
    """Change one supported figure of a committed notebook's prose by a little; the test must name it."""
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "markdown":
                continue
            source = "".join(cell["source"])
            found = [c for c in claims(source) if c[2] == "%" and not c[3]]
            if not found:
                continue
            _, number, _, _ = found[0]
            value = float(number.replace(",", ""))
            planted = next(p for p in (f"{value + d:g}" for d in (7, 13, 19, 23, 29, 31)) if not supported(
                p, "%", notebook_outputs(nb) | sources.for_sentence(source)))
            cell["source"] = source.replace(f"{number}%", f"{planted}%", 1)
            missing = unsupported_claims(nb, sources)
            assert any(m.startswith(f"cell {i}: {planted} %") for m in missing), (path.name, number, planted)
            return
    pytest.fail("no notebook has a percentage in its prose to plant a mismatch in")


READING = re.compile(r"Reading it takes about (\d+) minutes \(its prose at 200 words a minute")


def prose_words(nb: dict) -> int:
    return sum(len("".join(c["source"]).split()) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "solutions" not in p.parts], ids=lambda p: p.name)
def test_the_reading_time_is_the_prose_at_200_words_a_minute(path):
    """Each notebook's card says how long its prose takes to read; the figure is its markdown's word count at 200
    words a minute, to the nearest 5 minutes, and COURSE.md's table says the same."""
    nb = json.loads(path.read_text())
    card = next("".join(c["source"]) for c in nb["cells"] if "".join(c["source"]).startswith("## Before you start"))
    stated = int(READING.search(card).group(1))
    assert stated == max(5, 5 * round(prose_words(nb) / 200 / 5)), (path.name, prose_words(nb))
    row = next(line for line in (ROOT / "COURSE.md").read_text().splitlines() if f"notebooks/{path.name})" in line)
    assert f"about {stated} min" in row, row
