"""Try something simple first: a program of rules that answers the instruction mixture.

Before training a language model for a task, write the simplest program that could do it
and measure it on the same held-out prompts. Our world is regular, so a few regular
expressions over the pretraining corpus (who lives where), two word lists (sentiment) and a
little Python (arithmetic, sorting, counting) go a long way — with no training, in
milliseconds, and exactly right wherever a rule applies. Where no rule applies — a phrasing
the rules never anticipated — the program has nothing to say, while a language model that
learned the task from many phrasings may still answer. That trade is what notebook 6 measures.

Every rule below reads only the instruction (and, for facts, the corpus): no gold answer,
no evaluation set, no template index.
"""

from __future__ import annotations

import re
import time

from embiggen.data.world import CLOZE_PREFIXES, NEGATIVE_WORDS, PETS, POSITIVE_WORDS, THINGS, TOWNS
from embiggen.judging.evaluate import exact_match

NAME = r"[A-Z][a-z]+ [A-Z][a-z]+"
#: One pattern per fact, from the corpus's own sentences ("Alma Brook lives in Redford.").
FACT_PATTERNS = {attribute: re.compile(prefix.format(name=f"(?P<name>{NAME})")
                                       + r" (?P<value>[A-Za-z][a-z ]*?)(?:\.| and )")
                 for attribute, prefix in CLOZE_PREFIXES.items()}
ATTRIBUTE_WORDS = {"town": ("live",), "job": ("job", "work"), "pet": ("pet", "animal"), "colour": ("colour",),
                   "food": ("food",)}


class RuleBasedAssistant:
    """`answer(instruction)`: one rule per kind of task, else "I don't know."."""

    def __init__(self, corpus: list[str]):
        self.facts = {(m["name"], attribute): m["value"] for doc in corpus
                      for attribute, pattern in FACT_PATTERNS.items() for m in pattern.finditer(doc)}
        self.names = sorted({name for name, _ in self.facts}, key=len, reverse=True)

    def answer(self, instruction: str) -> str:
        low, names = instruction.lower(), [n for n in self.names if n in instruction]
        listed = re.search(r"\b([a-z]+(?:, [a-z]+)+)\b", instruction)  # a comma-separated list
        if m := re.search(r"(\d+) (plus|minus|\+|-) (\d+)", instruction):  # arithmetic
            a, b, plus = int(m[1]), int(m[3]), m[2] in ("plus", "+")
            value = a + b if plus else a - b
            return str(value) if "give the number" in low else f"{a} {'plus' if plus else 'minus'} {b} is {value}."
        if "review" in low or "customer" in low:  # sentiment: count the words of each list
            positive = sum(w in low for w in POSITIVE_WORDS) > sum(w in low for w in NEGATIVE_WORDS)
            return ("yes" if positive else "no") if "- yes" in low else ("positive" if positive else "negative")
        if listed and ("sort" in low or "reverse" in low):  # list operations
            items = listed[1].split(", ")
            return ", ".join(sorted(items) if "sort" in low else reversed(items))
        if listed and any(w in low for w in ("how many", "count", "how often")):  # counting
            rest = low.replace(listed[1], " ")
            thing = next((t for t in THINGS if re.search(rf"\b{t}\b", rest)), None)
            return str(listed[1].split(", ").count(thing)) if thing else "I don't know."
        if "- yes" in low and names:  # fact check: does the corpus say so?
            town = next((t for t in TOWNS if t in instruction), None)
            return "yes" if self.facts.get((names[0], "town")) == town else "no"
        if "story" in low and names:  # the hero is the first person the story names
            return min(names, key=instruction.index)
        if any(w in low for w in ("sentence", "mentioned", "pick out")):  # extraction: the town or animal it names
            words = TOWNS if "town" in low else PETS
            return next((w for w in words if re.search(rf"\b{w}\b", instruction.split("OPTIONS")[0])), "I don't know.")
        for attribute, keys in ATTRIBUTE_WORDS.items():  # fact questions: look it up in the corpus
            if names and any(re.search(rf"\b{k}", low) for k in keys) and (names[0], attribute) in self.facts:
                value = self.facts[names[0], attribute]
                if "few words" in low:
                    return value.removeprefix("an ").removeprefix("a ") if attribute == "job" else value
                return f"{CLOZE_PREFIXES[attribute].format(name=names[0])} {value}."
        return "I don't know."


def evaluate_rules(rules: RuleBasedAssistant, examples) -> dict:
    """`evaluate.evaluate_tasks` for the rules: exact-match accuracy overall and per cluster,
    one row per prompt, and the seconds all the answers took."""
    started = time.perf_counter()
    responses = [rules.answer(e.instruction) for e in examples]
    seconds = time.perf_counter() - started
    rows = [{"cluster": e.cluster, "template": e.template, "instruction": e.instruction, "answer": e.answer,
             "response": r, "correct": exact_match(r, e.answer)} for e, r in zip(examples, responses)]
    by_cluster: dict[str, list[bool]] = {}
    for row in rows:
        by_cluster.setdefault(row["cluster"], []).append(row["correct"])
    return {"accuracy": sum(r["correct"] for r in rows) / max(1, len(rows)),
            "per_cluster": {c: sum(v) / len(v) for c, v in by_cluster.items()}, "rows": rows, "seconds": seconds}
