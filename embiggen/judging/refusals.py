"""Why does a model refuse an ordinary question? Three measurements, each a guess tested.

A policy that declines "What's the hometown of Alma Brook?" and answers "Where does Alma Brook
live?" has tied refusing to the surface of a request. Three places the tie can come from, and
how to look at each:

* **the words** (`trigger_words`): take a declined prompt, drop one word at a time, and see
  which drops turn the refusal into an answer. A word whose removal flips many refusals is a
  trigger;
* **the data** (`surface_overlap`): the share of a prompt's words that also occur in the
  harmful requests the models were trained to refuse, beside the share found in the ordinary
  templates they were trained to answer. A paraphrase that reads more like the harmful
  requests than like the questions is one a model that reads surfaces will refuse;
* **the reward** (`reward_for_refusing`): what the reward model pays for "I cannot help with
  that." to an ordinary question, against what it pays for the right answer. If the refusal
  scores higher, PPO is *paid* to refuse, and will learn to. And against what it pays for the
  answer a policy that reads the question as a harmful request gives ("Sure. Wait until night,
  then do it quickly."): the labeler scores that a wrong answer (0), above a decline (-1), so a
  reward model that pays the refusal more pushes such a policy to refuse, even if it pays the
  right answer most of all — the right answer is not what the policy can write.
"""

from __future__ import annotations

import re

from embiggen.data.mixture import CONFIDENT_HARMFUL, REFUSAL
from embiggen.data.tasks import TaskExample
from embiggen.judging.labeler import Labeler
from embiggen.lm.generate import chat_responses


def words(text: str) -> list[str]:
    """Lower-case words of a prompt or template, placeholders ("{name}") and punctuation dropped."""
    return re.findall(r"[a-z']+", re.sub(r"\{[a-z]+\}", " ", text.lower()))


def surface_overlap(prompt: str, harmful_templates: list[str], ordinary_templates: list[str],
                    ignore: set[str] = frozenset()) -> dict:
    """The share of the prompt's distinct words (less `ignore`, e.g. the person's name) found in
    any of `harmful_templates`, and the share found in any of `ordinary_templates`, and which."""
    mine = set(words(prompt)) - {w.lower() for w in ignore}
    harmful = {w for t in harmful_templates for w in words(t)}
    ordinary = {w for t in ordinary_templates for w in words(t)}
    n = max(1, len(mine))
    return {"harmful": len(mine & harmful) / n, "ordinary": len(mine & ordinary) / n,
            "harmful_only": sorted(mine & harmful - ordinary), "ordinary_only": sorted(mine & ordinary - harmful)}


def reward_for_refusing(reward_model, prompts: list[TaskExample], compliance: str = CONFIDENT_HARMFUL[0]) -> dict:
    """The reward model's normalised score of "I cannot help with that.", of the gold answer, and of
    `compliance` (a harmful request's answer, wrong here) to each ordinary prompt; the share of
    prompts where the refusal scores above the answer (`refusal_preferred`), and above the
    compliance (`refusal_over_compliance`: the labeler ranks the compliance higher)."""
    instructions = [e.instruction for e in prompts]
    refusal = reward_model.score(instructions, [REFUSAL] * len(prompts)).tolist()
    answer = reward_model.score(instructions, [e.answer for e in prompts]).tolist()
    complied = reward_model.score(instructions, [compliance] * len(prompts)).tolist()
    n = max(1, len(prompts))
    return {"refusal": refusal, "answer": answer, "compliance": complied, "mean_refusal": sum(refusal) / n,
            "mean_answer": sum(answer) / n, "mean_compliance": sum(complied) / n,
            "refusal_preferred": sum(r > a for r, a in zip(refusal, answer)) / n,
            "refusal_over_compliance": sum(r > c for r, c in zip(refusal, complied)) / n}


def trigger_words(model, tokenizer, prompts: list[TaskExample], labeler: Labeler | None = None,
                  max_new_tokens: int = 32) -> dict:
    """For each prompt the model declines (greedy), the prompt with one word dropped at a time,
    answered again: which drops end the refusal. Returns, per word, how many declined prompts
    it was in and how many of those stopped being declined without it, and the rows."""
    labeler = labeler or Labeler()
    texts, finished = chat_responses(model, tokenizer, [e.instruction for e in prompts], max_new_tokens=max_new_tokens)
    declined = [e for e, t, f in zip(prompts, texts, finished) if labeler.judge(e, t, f).category == "declined"]
    variants = []  # (prompt index, word dropped, the prompt without it)
    for i, e in enumerate(declined):
        tokens = e.instruction.split(" ")
        for j, token in enumerate(tokens):
            word = re.sub(r"[^a-z']", "", token.lower())
            if word:
                variants.append((i, word, " ".join(tokens[:j] + tokens[j + 1:])))
    answers, done = chat_responses(model, tokenizer, [v for _, _, v in variants], max_new_tokens=max_new_tokens) \
        if variants else ([], [])
    per_word: dict[str, list[int]] = {}
    rows = []
    for (i, word, text), answer, f in zip(variants, answers, done):
        example = declined[i]
        still = labeler.judge(TaskExample(example.cluster, example.template, text, example.answer, example.meta),
                              answer, f).category == "declined"
        counts = per_word.setdefault(word, [0, 0])
        counts[0] += 1
        counts[1] += not still
        rows.append({"prompt": example.instruction, "dropped": word, "response": answer, "still_declined": still})
    return {"n_prompts": len(prompts), "n_declined": len(declined),
            "per_word": {w: {"in_declined": c[0], "flipped": c[1]} for w, c in
                         sorted(per_word.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))},
            "rows": rows}
