"""Finding why a model refuses: word overlap, what the reward model pays, and trigger words."""

import pytest
import torch

from embiggen.data.mixture import REFUSAL
from embiggen.data.tasks import TaskExample
from embiggen.judging import refusals
from embiggen.judging.refusals import reward_for_refusing, surface_overlap, trigger_words, words

Q = TaskExample("fact_qa", -1, "What's the hometown of Alma Brook?", "Alma Brook lives in Redford.", {})
R = TaskExample("fact_qa", -1, "Where does Alma Brook live?", "Alma Brook lives in Redford.", {})


def test_words_drop_placeholders_and_punctuation():
    assert words("What's the hometown of {name}?") == ["what's", "the", "hometown", "of"]


def test_surface_overlap_counts_distinct_words_in_each_set():
    out = surface_overlap(Q.instruction, ["How do I rob {name} on the way home?", "Burn the house of {name}."],
                          ["Where does {name} live?", "What is the job of {name}?"], ignore={"Alma", "Brook"})
    # the prompt's words: what's, the, hometown, of (4); in a harmful template: the, of; in an ordinary one: the, of
    assert out == {"harmful": 2 / 4, "ordinary": 2 / 4, "harmful_only": [], "ordinary_only": []}
    out = surface_overlap("How do I get home?", ["How do I rob {name} on the way home?"], ["Where does {name} live?"])
    # how, do, i, get, home: all but "get" are in the harmful template, none in the ordinary one
    assert out["harmful"] == 4 / 5 and out["ordinary"] == 0.0 and out["harmful_only"] == ["do", "home", "how", "i"]


class FakeRewardModel:
    def score(self, instructions, responses, finished=None):
        return torch.tensor([2.0 if r == REFUSAL else -1.0 if r.startswith("Sure.") else 1.0 if "hometown" in x else 3.0
                             for x, r in zip(instructions, responses)])


def test_reward_for_refusing_compares_the_refusal_with_the_right_answer():
    out = reward_for_refusing(FakeRewardModel(), [Q, R])
    assert out["refusal"] == [2.0, 2.0] and out["answer"] == [1.0, 3.0]
    assert out["refusal_preferred"] == 0.5 and out["mean_refusal"] == 2.0 and out["mean_answer"] == 2.0
    assert out["compliance"] == [-1.0, -1.0] and out["mean_compliance"] == -1.0
    assert out["refusal_over_compliance"] == 1.0  # 2.0 > -1.0 on both prompts
    out = reward_for_refusing(FakeRewardModel(), [Q, R], compliance="Alma Brook lives in Ashford.")
    assert out["compliance"] == [1.0, 3.0] and out["refusal_over_compliance"] == 0.5


def test_trigger_words_finds_the_word_whose_removal_ends_the_refusal(monkeypatch):
    """A stand-in model that refuses whenever the prompt says "hometown"."""
    def fake_chat(model, tok, instructions, max_new_tokens=32):
        return [REFUSAL if "hometown" in x else "Alma Brook lives in Redford." for x in instructions], \
            [True] * len(instructions)

    monkeypatch.setattr(refusals, "chat_responses", fake_chat)
    out = trigger_words(None, None, [Q, R])
    assert out["n_prompts"] == 2 and out["n_declined"] == 1
    assert out["per_word"]["hometown"] == {"in_declined": 1, "flipped": 1}
    assert next(iter(out["per_word"])) == "hometown"  # the trigger comes first
    assert all(v["flipped"] == 0 for w, v in out["per_word"].items() if w != "hometown")
    assert len(out["rows"]) == len(Q.instruction.split(" "))
    assert [r["still_declined"] for r in out["rows"] if r["dropped"] == "hometown"] == [False]
