"""Generative agents, in miniature: language models with memories, talking.

Park et al. (2023), "Generative Agents: Interactive Simulacra of Human Behavior"
(https://arxiv.org/abs/2304.03442), gave each of 25 agents in a small town a *memory stream* — a
list of everything it observed, in plain sentences — and let a language model decide what each
agent says, prompted with the memories it retrieves. One finding was *information diffusion*:
a fact that one agent starts with (Sam is running for mayor) spreads from agent to agent through
their conversations alone, so that after two game days a third of the town knew it.

This file is that loop at the smallest size that still shows it:

- each `Agent` has a name and a memory stream, starting with a few facts of our world about
  other people ("Alma Brook lives in Redford.");
- in each round the agents meet in random pairs; each speaker is shown its most recent memories
  (Park et al. retrieve by recency, importance and relevance; we use recency alone) and asked to
  tell the other one thing it remembers; the listener stores what it heard, verbatim, as
  "<speaker> told me: <sentence>";
- after every round, `knowledge` checks which facts each agent's memory now states — the person's
  full name and the right value in one sentence — and which it holds only garbled (the person
  named with another value of the same kind: another town).

Any chat model can play the agents. Ours are trained on answering questions, not on reading a
prompt's context, so notebook 6 gives the agents a real one (SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from embiggen.data.world import COLOURS, FOODS, JOBS, PETS, TOWNS
from embiggen.lm.generate import chat_responses


@dataclass
class Agent:
    name: str
    memory: list[str] = field(default_factory=list)  # oldest first


@dataclass(frozen=True)
class Fact:
    person: str
    value: str
    sentence: str
    rivals: tuple[str, ...] = ()  # the other values of the same kind (the other towns, for a town)

    def stated_in(self, text: str) -> bool:
        text = text.lower()
        return self.person.lower() in text and self.value.lower() in text

    def garbled_in(self, text: str) -> bool:
        """The person named with another value of the same kind, and not the right one."""
        text = text.lower()
        return (self.person.lower() in text and self.value.lower() not in text
                and any(r.lower() in text for r in self.rivals))


def world_facts(people, attributes=("town", "job", "pet")) -> list[Fact]:
    """One fact sentence per person and attribute, in the corpus's plainest phrasing."""
    values = {"town": TOWNS, "job": JOBS, "pet": PETS, "colour": COLOURS, "food": FOODS}
    phrasing = {"town": "{name} lives in {value}.", "job": "{name} works as a {value}.",
                "pet": "{name} keeps a {value}.", "colour": "{name} likes the colour {value}.",
                "food": "{name} loves {value}."}
    return [Fact(p.name, getattr(p, a), phrasing[a].format(name=p.name, value=getattr(p, a)),
                 tuple(v for v in values[a] if v != getattr(p, a))) for p in people for a in attributes]


def agent_prompt(agent: Agent, recent: int = 5) -> str:
    """What the speaker is shown: its `recent` newest memories (newest first), and the ask. (Who it
    is and whom it meets stay out: a 135M model shown them greets the listener instead.)"""
    memories = "\n".join(f"- {m}" for m in reversed(agent.memory[-recent:]))
    return f"Facts:\n{memories}\nRepeat one of the facts above, word for word."


def first_sentence(text: str) -> str:
    text = text.strip().split("\n")[0]
    end = text.find(". ")
    return text[: end + 1] if end >= 0 else text


def knowledge(agents: list[Agent], facts: list[Fact]) -> dict[str, list[str]]:
    """For each agent and each of `facts`: "knows" if one sentence of its memory states it (the
    person's full name and the right value), "garbled" if not but one names the person with
    another value of the same kind (another town), "" if it holds neither."""
    def state(agent, fact):
        if any(fact.stated_in(m) for m in agent.memory):
            return "knows"
        return "garbled" if any(fact.garbled_in(m) for m in agent.memory) else ""
    return {a.name: [state(a, f) for f in facts] for a in agents}


def talk(model, tokenizer, agents: list[Agent], facts: list[Fact], rounds: int, seed: int = 0,
         max_new_tokens: int = 32, recent: int = 5) -> dict:
    """`rounds` rounds of pairwise conversation (the agents' memories grow in place). Returns the
    transcript (one row per utterance) and `knowledge` before the first round and after each."""
    if len(agents) < 2 or rounds < 1:
        raise ValueError(f"talk needs at least two agents and one round (got {len(agents)} and {rounds})")
    rng = random.Random(seed)
    transcript, known = [], [knowledge(agents, facts)]
    for r in range(1, rounds + 1):
        order = list(agents)
        rng.shuffle(order)
        for a, b in zip(order[::2], order[1::2]):
            for speaker, listener in ((a, b), (b, a)):
                (said,), _ = chat_responses(model, tokenizer, [agent_prompt(speaker, recent)],
                                            max_new_tokens=max_new_tokens)
                said = first_sentence(said)
                listener.memory.append(f"{speaker.name} told me: {said}")
                transcript.append({"round": r, "speaker": speaker.name, "listener": listener.name, "said": said,
                                   "states a fact": ", ".join(f.person for f in facts if f.stated_in(said)) or "—"})
        known.append(knowledge(agents, facts))
    return {"transcript": transcript, "knowledge": known}
