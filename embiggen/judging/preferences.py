"""Preference data, collected the InstructGPT way.

Ouyang et al. (2022, https://arxiv.org/abs/2203.02155, section 3.5) showed labelers a prompt
and K model samples (K = 4 to 9) and had them rank the samples; every one of the
K·(K-1)/2 pairs of a ranking became a training comparison for the reward model, and all the
pairs of one prompt were kept together in one batch. We do the same with the SFT model and
the simulated labeler of `embiggen.judging.labeler`:

    for each prompt x:  y_1 .. y_K ~ pi_SFT(. | x)          (sampling, temperature 1)
                        rank them by the labeler's gold score
                        every pair with different scores -> (x, chosen y_w, rejected y_l)

Ties (e.g. two correct answers) make no pair. InstructGPT's labelers also *wrote* answers (the
demonstrations); ours writes one where the samples cannot reach the best answer: to a question
about someone who does not exist, the SFT model cannot name the person (it cannot copy a name
it never read, notebook 1), so no sample pair ever shows the reward model that the right name
beats a wrong one. With `written=True` the labeler adds its own "I do not know anyone called
<them>." to those rankings, which then hold right-name vs wrong-name and right-name vs no-name
pairs, beside the samples' own no-name vs wrong-name pairs.

The samples miss a second contrast, and missing it costs more. The SFT model seldom declines an
ordinary task, so "I cannot help with that." turns up in the rankings only as the winner, to a
harmful request: a reward model trained on them learns that the words of a refusal score well
*whatever was asked*. Measured on the laptop preset (notebook 3), it scored the refusal above the
right answer on 98% of held-out ordinary prompts and on every held-out paraphrase, and a short PPO
run on it declined 42% of ordinary questions asked in new words (0% on the reward model with the
declines). With `written_refusals=True` the labeler also ranks one decline of its own (drawn
from `DECLINES`) with the samples of every ordinary task, so every such ranking shows the reward model that declining an answerable question loses to answering
it, right or wrong (Bai et al. 2022 and Llama 2 collected such "over-refusal" comparisons on
purpose). To a question about a person the model knows it also writes "I do not know anyone
called <them>.": the reward model must learn *who* the hedge is honest about, not only its words.

Declines losing to answers were still not enough. Asked an ordinary question in words no template
uses, the SFT model often answers as if to a harmful request ("Sure. Wait until night, then do it
quickly."), and the reward model, which saw those words only as the losers of harmful requests,
paid "I cannot help with that." more than them on every paraphrased fact question — though the
labeler scores the misreading a wrong answer (0), above a decline (-1); the stage's PPO declines
such questions with that refusal. With `written_misreadings=True` the labeler also writes one
harmful-request answer (drawn from `embiggen.data.mixture.CONFIDENT_HARMFUL`) into every ordinary
task's ranking, a wrong answer like any other, which the decline is seen to lose to. Off: measured
on the laptop preset, PPO on such a reward model still declined 29.5% of the paraphrases (29%
without it) and was honest less often (65% against 77%).

The prompts (`embiggen.data.splits`) mix ordinary
tasks with the three kinds of alignment prompt: people who do not exist, medical questions
and harmful requests. Held-out prompts, made from material no training stage uses (other
invented names, other templates and symptoms), give held-out pairs for evaluation.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

from embiggen.data.mixture import CONFIDENT_HARMFUL, DONT_KNOW, DONT_KNOW_WHO, NOT_A_DOCTOR, REFUSAL
from embiggen.data.tasks import TaskExample
from embiggen.data.world import ALIGNMENT_KINDS
from embiggen.judging.labeler import Judgement, Labeler, pair_type
from embiggen.lm.generate import chat_responses
from embiggen.utils import atomic_write_text


@dataclass
class Comparison:
    """One row of preference data."""
    prompt: str            # the instruction (the chat template is applied when encoding)
    chosen: str
    rejected: str
    kind: str              # the prompt's cluster or alignment kind
    pair_type: str         # e.g. "correct vs wrong", "hedged vs fabricated"
    gold_margin: float     # gold(chosen) - gold(rejected); negative when label noise flipped it
    chosen_finished: bool = True
    rejected_finished: bool = True


@dataclass
class Collection:
    """Everything preference collection produced: the samples with their judgements, and the pairs."""
    prompts: list[TaskExample]
    samples: list[list[str]]              # K responses per prompt
    finished: list[list[bool]]
    judgements: list[list[Judgement]]     # of the samples, then of the written answers
    pairs: list[Comparison]
    written: list[list[str]] | None = None  # the labeler's own answers ranked with each prompt's samples


def sample_responses(model, tokenizer, prompts: list[TaskExample], k: int, temperature: float = 1.0,
                     max_new_tokens: int = 32, seed: int = 0, batch_size: int = 256,
                     desc: str | None = None) -> tuple[list, list]:
    """K sampled responses per prompt, and whether each ended with EOS (`desc`: a progress bar)."""
    texts, finished = chat_responses(model, tokenizer, [e.instruction for e in prompts for _ in range(k)],
                                     max_new_tokens=max_new_tokens, greedy=False, temperature=temperature, seed=seed,
                                     batch_size=batch_size, desc=desc)
    return [texts[i: i + k] for i in range(0, len(texts), k)], [finished[i: i + k] for i in range(0, len(texts), k)]


def rank_pairs(labeler: Labeler, example: TaskExample, responses: list[str], finished: list[bool],
               rng: random.Random) -> tuple[list[Judgement], list[Comparison]]:
    """Judge K responses and turn them into all pairwise comparisons (ties dropped)."""
    judgements = [labeler.judge(example, r, f) for r, f in zip(responses, finished)]
    pairs = []
    for i, j in combinations(range(len(responses)), 2):
        choice = labeler.prefer(example, responses[i], responses[j], rng, (finished[i], finished[j]))
        if choice is None:
            continue
        w, l = (i, j) if choice == 0 else (j, i)
        pairs.append(Comparison(example.instruction, responses[w], responses[l], example.cluster,
                                pair_type(judgements[w], judgements[l]), judgements[w].gold - judgements[l].gold,
                                finished[w], finished[l]))
    return judgements, pairs


#: The declines the labeler writes into an ordinary task's ranking (with `written_refusals`): every
#: canned hedge a model here learns, since a reward model that never saw one lose pays for all of them.
DECLINES = (REFUSAL, DONT_KNOW_WHO, NOT_A_DOCTOR)


def written_answers(example: TaskExample, rng: random.Random | None = None, hedges: bool = True,
                    refusals: bool = False, misreadings: bool = False) -> list[str]:
    """The answers the labeler writes itself for `example`: with `hedges`, "I do not know anyone
    called <them>." to a question about someone who does not exist (the answer no sample can
    give); with `refusals`, one of `DECLINES` (drawn with `rng`) to an ordinary task (the answer
    the samples seldom give, and must be seen to lose), and to a question about a known person
    "I do not know anyone called <them>." too: the hedge that wins about people who do not exist
    is a false decline about people who do. With `misreadings`, also one harmful request's answer
    (`CONFIDENT_HARMFUL`) to an ordinary task: what a model that misreads the task says, wrong."""
    person = example.meta.get("person")
    if example.cluster == "unknown_person":
        return [DONT_KNOW.format(name=person)] if hedges and person else []
    if (refusals or misreadings) and example.cluster not in ALIGNMENT_KINDS:
        if rng is None:
            raise ValueError("written refusals and misreadings need an rng (random.Random) to draw them")
        # about a person the model knows, also the hedge it is paid for about people it does not: false here
        mine = (([DONT_KNOW.format(name=person)] if person else []) + [rng.choice(DECLINES)]) if refusals else []
        return mine + ([rng.choice(CONFIDENT_HARMFUL)] if misreadings else [])
    return []


def collect_preferences(model, tokenizer, prompts: list[TaskExample], labeler: Labeler, k: int = 4,
                        temperature: float = 1.0, max_new_tokens: int = 32, seed: int = 0,
                        desc: str | None = None, written: bool = False,
                        written_refusals: bool = False, written_misreadings: bool = False) -> Collection:
    """Sample K responses per prompt from `model` and let `labeler` rank them (`desc`: a progress
    bar); with `written` / `written_refusals` / `written_misreadings`, ranked together with the
    labeler's own `written_answers` (its hedges / its declines / its misreadings of ordinary tasks)."""
    if k < 2:
        raise ValueError(f"k must be at least 2 to make pairs, got {k}")
    samples, finished = sample_responses(model, tokenizer, prompts, k, temperature, max_new_tokens, seed, desc=desc)
    rng, draw = random.Random(seed), random.Random(seed + 1)  # the labeler's noise; which decline it writes
    judgements, pairs, extra = [], [], []
    for example, responses, done in zip(prompts, samples, finished):
        mine = written_answers(example, draw, hedges=written, refusals=written_refusals,
                               misreadings=written_misreadings)
        js, ps = rank_pairs(labeler, example, responses + mine, done + [True] * len(mine), rng)
        judgements.append(js)
        pairs.extend(ps)
        extra.append(mine)
    return Collection(prompts, samples, finished, judgements, pairs, extra)


def pairs_jsonl(pairs: list[Comparison]) -> str:
    """Pairs as JSON lines, every field kept (`read_pairs` reads them back)."""
    return "".join(json.dumps(asdict(p)) + "\n" for p in pairs)


def read_pairs(path: str | Path) -> list[Comparison]:
    """The pairs of a file written from `pairs_jsonl`."""
    return [Comparison(**json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]


def export_pairs(pairs: list[Comparison], path: str | Path) -> Path:
    """Write pairs as JSONL with the conventional `prompt` / `chosen` / `rejected` fields
    (the format of TRL's RewardTrainer and DPOTrainer), atomically."""
    path = Path(path)
    lines = [json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "kind": p.kind,
                         "pair_type": p.pair_type}) for p in pairs]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def first_ranked(collection: Collection, kinds: list[str]) -> list[int]:
    """For each kind, the index of the first prompt whose K samples did not all tie (so the
    ranking says something) — for showing preference collection at work."""
    out = []
    for kind in kinds:
        for i, (e, js) in enumerate(zip(collection.prompts, collection.judgements)):
            if e.cluster == kind and len({j.gold for j in js}) > 1:
                out.append(i)
                break
    return out
