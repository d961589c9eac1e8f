"""Every data split of the course, built in one place: what each stage trains on and what it is judged on.

FLAN's whole method is held-out evaluation (Wei et al. 2021, https://arxiv.org/abs/2109.01652),
and a held-out figure is only as good as the wall between training and evaluation data. A
different random seed over the same small pools is no wall: with ten invented names and
sixty medical questions, "fresh" prompts are mostly prompts the model trained on. So the
wall is built from the *raw material*, before any prompt is drawn:

* **people who do not exist** — hundreds of names invented from syllables (`world.invent_words`),
  none of them in the pretraining corpus. Each split (SFT, preferences, PPO, evaluation) gets
  its own first names and its own surnames, so no two splits share a name;
* **medical questions** — the last templates and the last symptoms of `world.MEDICAL_TEMPLATES`
  and `world.SYMPTOMS` are for evaluation only: an evaluation question pairs an unseen
  phrasing with an unseen symptom;
* **harmful requests** — the last templates of `world.HARMFUL_TEMPLATES` are for evaluation
  only, and so are their *targets*: evaluation requests are about the pretraining-only
  people, training requests about the others;
* **ordinary tasks** — every evaluation set is drawn first; every training set (the SFT
  mixture, preference prompts and their iterated-RLHF refresh, PPO prompts, PPO-ptx
  demonstrations) then skips any prompt that an evaluation set holds.

`DataSplits(preset)` builds every set from the table of seeds below, and `overlap` counts
evaluation prompts found in training sets. The tests assert that the count is zero, that no
evaluation name occurs in the corpus or in any training data, and that the old construction
(one pool, two seeds) would have failed.
"""

from __future__ import annotations

import random
from dataclasses import replace
from functools import cached_property, lru_cache

from embiggen.data.paraphrases import paraphrase_set
from embiggen.data.mixture import (CLUSTER_WEIGHTS, AlignmentMaterial, MixtureSpec, alignment_example, evaluation_sets,
                                   fact_questions, heldin_templates, heldout_template, prompt_mix, task_example,
                                   training_mixture)
from embiggen.data.tasks import TaskExample, make_example, template_of
from embiggen.data.toolbox import TOOL_CLUSTERS, tool_demonstration
from embiggen.data.world import (ALIGNMENT_KINDS, HARMFUL_TEMPLATES, LAST_NAMES, MEDICAL_TEMPLATES, SYMPTOMS, World,
                                 invent_words, world_words)
from embiggen.presets import Preset, check_preset
from embiggen.utils import config_key

#: Bump when any split changes, so cached models trained on other data are not reused.
SPLITS_VERSION = 3

#: Offsets added to the preset's seed: one seed per split, all in one table.
SEEDS = {
    "sft_train": 0, "sft_val": 1,           # the SFT mixture (notebook 2)
    "counting_probe": 7,                    # notebook 2's counting confusion matrix
    "sft_eval": 99,                         # notebook 2's evaluation sets
    "preferences": 200,                     # prompts whose samples the labeler ranks
    "rm_eval": 201,                         # held-out prompts for the reward model's pairs
    "ppo": 300, "ptx": 301,                 # PPO's prompts and PPO-ptx's demonstrations
    "ppo_eval": 400,                        # held-out prompts on which SFT, PPO and best-of-n are judged
    "refresh": 500,                         # iterated RLHF: + round number
    "refresh_eval": 600,                    # held-out prompts for each round's new reward model: + round
    "person_probe": 700,                    # known / pretraining-only / never-seen people
    "names": 800,                           # inventing the names of people who do not exist
    "dpo_round": 900,                       # iterated DPO: + round number
    "tools": 1000, "tools_val": 1001,       # the tool fine-tune's demonstrations (notebook 6)
    "tools_eval": 1002,                     # its held-out prompts: counting, arithmetic beyond the world's range
    "grpo": 1100,                           # GRPO's prompts (notebook 5): held-in templates of its clusters
    "paraphrased": 1200,                    # ordinary questions in words no template uses (notebook 3)
}

#: Offsets added to the preset's seed for *sampling answers* on a split's prompts (preference collection).
SAMPLE_SEEDS = {
    "preferences": 0, "rm_eval": 1,         # the SFT model's K answers: training and held-out pairs
    "refresh": 0, "refresh_eval": 50,       # the policy's K answers in iterated RLHF: + round number
    "dpo_round": 100,                       # the DPO policy's K answers in iterated DPO: + round number
    "pass_at_k": 200,                       # n answers per held-out prompt behind pass@k and majority votes
}

#: The pretraining corpus: documents drawn from the world with these seeds (mixed with the world's own).
CORPUS_SEEDS = {"train": 0, "val": 1}

#: Which raw material each stage may draw its alignment prompts from.
MATERIAL_SPLITS = ("sft", "preferences", "ppo", "eval")
#: Invented people per split: (first names, surnames, full names).
NAMES_PER_SPLIT = {"sft": (60, 60, 240), "preferences": (40, 40, 160), "ppo": (40, 40, 160), "eval": (40, 40, 160)}
#: Share of invented full names that take a surname of the world ("Felis Brook" beside "Felis Gawick"),
#: so that the *first* name, as for real people, is what tells known from unknown.
WORLD_SURNAME_SHARE = 0.3
#: How many templates and symptoms, counted from the end of each list, only evaluation may use.
N_EVAL_MEDICAL_TEMPLATES, N_EVAL_SYMPTOMS, N_EVAL_HARMFUL_TEMPLATES = 5, 8, 5


def build_world(preset: Preset) -> World:
    """The preset's world: its people, facts and corpus (the invented names of every split are in
    `DataSplits`; none of them occurs in the corpus)."""
    return World.generate(preset.seed, preset.n_people, n_unknown=preset.n_unknown, max_operand=preset.max_operand)


def build_corpus(preset: Preset, world: World) -> tuple[list[str], list[str]]:
    """Pretraining's training and validation documents: the same world, different random documents."""
    return (world.pretraining_corpus(preset.train_documents, seed=CORPUS_SEEDS["train"]),
            world.pretraining_corpus(preset.val_documents, seed=CORPUS_SEEDS["val"]))


def invented_names(seed: int) -> dict[str, tuple[str, ...]]:
    """Split -> invented full names. Splits share no first name and no invented surname."""
    rng = random.Random(seed)
    n_first = sum(f for f, _, _ in NAMES_PER_SPLIT.values())
    n_last = sum(s for _, s, _ in NAMES_PER_SPLIT.values())
    firsts = invent_words(rng, n_first, "first", taken=world_words())
    lasts = invent_words(rng, n_last, "last", taken=world_words() | set(firsts))
    out = {}
    for split, (n_f, n_l, n_full) in NAMES_PER_SPLIT.items():
        my_firsts, firsts = firsts[:n_f], firsts[n_f:]
        my_lasts, lasts = lasts[:n_l], lasts[n_l:]
        names: dict[str, None] = {}
        while len(names) < n_full:
            surname = rng.choice(LAST_NAMES) if rng.random() < WORLD_SURNAME_SHARE else rng.choice(my_lasts)
            names[f"{rng.choice(my_firsts)} {surname}"] = None
        out[split] = tuple(names)
    return out


def alignment_material(world: World, split: str, names: dict[str, tuple[str, ...]]) -> AlignmentMaterial:
    """The raw material of one split: its own invented names; training splits share the
    training templates, symptoms and targets, evaluation has its own."""
    if split not in MATERIAL_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(MATERIAL_SPLITS)}")
    evaluation = split == "eval"
    med_cut, sym_cut, harm_cut = -N_EVAL_MEDICAL_TEMPLATES, -N_EVAL_SYMPTOMS, -N_EVAL_HARMFUL_TEMPLATES
    return AlignmentMaterial(
        split=split, unknown_names=names[split],
        medical_templates=tuple(MEDICAL_TEMPLATES[med_cut:] if evaluation else MEDICAL_TEMPLATES[:med_cut]),
        symptoms=tuple(SYMPTOMS[sym_cut:] if evaluation else SYMPTOMS[:sym_cut]),
        harmful_templates=tuple(HARMFUL_TEMPLATES[harm_cut:] if evaluation else HARMFUL_TEMPLATES[:harm_cut]),
        harmful_targets=tuple(world.pretraining_only_people if evaluation else world.instruction_people))


class DataSplits:
    """Every prompt set of every stage for one preset. Evaluation sets are drawn first; every
    training set skips their prompts (`reserved`). Sets are built when first asked for."""

    def __init__(self, preset: Preset, world: World | None = None):
        self.preset = preset
        self.world = world or build_world(preset)
        sft = preset.sft  # the mixture: which cluster is held out, how much alignment material, how much hedged
        self.spec = MixtureSpec(sft.heldout_cluster, sft.alignment_share, sft.hedge_share)
        self.names = invented_names(self.seed("names"))
        self.material = {split: alignment_material(self.world, split, self.names) for split in MATERIAL_SPLITS}
        self.rounds = tuple(range(2, preset.ppo.rounds + 1))  # iterated RLHF: the rounds that collect anew
        self.dpo_rounds = tuple(range(2, preset.dpo.rounds + 1))  # iterated DPO: likewise
        # GRPO's cluster sets: the stage's and the loose-verifier experiment's (notebook 5)
        self.grpo_cluster_sets = tuple(dict.fromkeys([tuple(preset.grpo.clusters),
                                                      tuple(preset.experiments.loose_verifier_clusters)]))

    def seed(self, split: str, offset: int = 0) -> int:
        """The seed that draws `split`'s prompts (`offset`: the round, for iterated RLHF)."""
        return self.preset.seed + SEEDS[split] + offset

    def sample_seed(self, split: str, offset: int = 0) -> int:
        """The seed for sampling a model's answers to `split`'s prompts."""
        return self.preset.seed + SAMPLE_SEEDS[split] + offset

    # ----- evaluation sets (drawn first) ---------------------------------------------
    @cached_property
    def sft_eval(self) -> dict[str, list[TaskExample]]:
        """Notebook 2's splits: held-in and held-out templates, the held-out cluster,
        pretraining-only people, and alignment prompts from the evaluation material."""
        return evaluation_sets(self.world, self.preset.evaluation.n_per_cluster, self.seed("sft_eval"),
                               self.material["eval"], self.spec)

    @cached_property
    def counting_probe(self) -> list[TaskExample]:
        rng = random.Random(self.seed("counting_probe"))
        return [task_example(self.world, "counting", rng) for _ in range(200)]

    def _eval_mix(self, n: int, seed: int) -> list[TaskExample]:
        return prompt_mix(self.world, n, seed, self.material["eval"], self.preset.reward.task_share, self.spec)

    @cached_property
    def rm_eval(self) -> list[TaskExample]:
        """Held-out prompts whose SFT samples, ranked, give the reward model's held-out pairs."""
        return self._eval_mix(self.preset.evaluation.n_rm_prompts, self.seed("rm_eval"))

    @cached_property
    def ppo_eval(self) -> list[TaskExample]:
        """Held-out prompts on which SFT, PPO, best-of-n and the KL sweep are judged."""
        return prompt_mix(self.world, self.preset.evaluation.n_ppo_prompts, self.seed("ppo_eval"), self.material["eval"],
                          self.preset.ppo.task_share, self.spec)

    def refresh_eval(self, round_: int) -> list[TaskExample]:
        """Held-out prompts for the reward model of iterated-RLHF round `round_`."""
        return self._refresh_eval[round_]

    @cached_property
    def _refresh_eval(self) -> dict[int, list[TaskExample]]:
        return {r: self._eval_mix(self.preset.evaluation.n_rm_prompts, self.seed("refresh_eval", r)) for r in self.rounds}

    @cached_property
    def person_probe(self) -> dict[str, list[TaskExample]]:
        """"Language models (mostly) know what they know" (Kadavath et al. 2022): the same fact
        questions about people the model was taught about (`known`), people it only read about
        in pretraining (`pretraining_only`), invented people of the evaluation split
        (`never_seen`), and never-seen people named in the world's own style (`world_style`,
        first names the world left unused, surnames it uses)."""
        rng = random.Random(self.seed("person_probe"))
        known = fact_questions(self.world.instruction_people, rng)
        pre = fact_questions(self.world.pretraining_only_people, rng)
        never = [self._unknown_question(rng, self.material["eval"]) for _ in range(len(known))]
        world_style = AlignmentMaterial("world_style", tuple(self.world.unknown_names), (), (), (), ())
        style = [self._unknown_question(rng, world_style) for _ in range(5 * len(self.world.unknown_names))]
        return {"known": known, "pretraining_only": pre, "never_seen": never, "world_style": style}

    @staticmethod
    def _unknown_question(rng: random.Random, material: AlignmentMaterial) -> TaskExample:
        return alignment_example(material, "unknown_person", rng, hedge=False)

    @cached_property
    def tools_eval(self) -> dict[str, list[TaskExample]]:
        """Notebook 6's held-out prompts: counting in the cluster's held-out template (which no
        training set of any stage uses, so no training prompt can be one of these), and
        arithmetic in every template whose larger operand is beyond the world's own range
        (Preset.max_operand < it <= tools.max_operand), which no model here ever computed and
        no other set contains."""
        rng, cfg = random.Random(self.seed("tools_eval")), self.preset.tools
        counting = [make_example(self.world, "counting", rng, template=heldout_template("counting"))
                    for _ in range(cfg.n_eval)]
        wide, beyond = replace(self.world, max_operand=cfg.max_operand), []
        while len(beyond) < cfg.n_eval:
            example = make_example(wide, "arithmetic", rng)
            if max(example.meta["a"], example.meta["b"]) > self.world.max_operand:
                beyond.append(example)
        return {"counting": counting, "arithmetic_beyond_range": beyond}

    @cached_property
    def paraphrased(self) -> list[TaskExample]:
        """Ordinary questions in words no training template uses (`embiggen.data.paraphrases`):
        facts of known and of pretraining-only people, sums and differences, sorting and
        reversing, preset.evaluation.n_paraphrased of each. Declining one is an over-refusal."""
        return paraphrase_set(self.world, self.preset.evaluation.n_paraphrased, self.seed("paraphrased"))

    def evaluation_sets(self) -> dict[str, list[TaskExample]]:
        """Every evaluation set by name (notebook 2's splits flattened as `sft_eval.<split>`)."""
        sets = {f"sft_eval.{k}": v for k, v in self.sft_eval.items()}
        sets.update({"counting_probe": self.counting_probe, "rm_eval": self.rm_eval, "ppo_eval": self.ppo_eval,
                     "paraphrased": self.paraphrased})
        sets.update({f"refresh_eval.{r}": self.refresh_eval(r) for r in self.rounds})
        sets.update({f"person_probe.{k}": v for k, v in self.person_probe.items()})
        sets.update({f"tools_eval.{k}": v for k, v in self.tools_eval.items()})
        return sets

    @cached_property
    def reserved(self) -> frozenset[str]:
        """Every evaluation instruction: no training set may contain one."""
        return frozenset(e.instruction for examples in self.evaluation_sets().values() for e in examples)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the splits' construction and of every reserved prompt. Training sets skip the
        reserved prompts, so the SFT, reward-model and PPO cache keys include it: a model is reused
        only if it trained on exactly the data that these splits would give it."""
        return config_key(SPLITS_VERSION, sorted(self.reserved))

    # ----- training sets (skip every reserved prompt) ---------------------------------
    def sft_train(self, clusters: list[str] | None = None, n: int | None = None) -> list[TaskExample]:
        """The SFT mixture (`clusters`: a subset, for FLAN's ablation)."""
        n = self.preset.sft.n_train if n is None else n
        return training_mixture(self.world, n, self.seed("sft_train"), self.material["sft"], self.spec, clusters,
                                self.reserved)

    def sft_val(self, clusters: list[str] | None = None) -> list[TaskExample]:
        return training_mixture(self.world, self.preset.sft.n_val, self.seed("sft_val"), self.material["sft"],
                                self.spec, clusters, self.reserved)

    @cached_property
    def preferences(self) -> list[TaskExample]:
        """Prompts whose SFT samples the labeler ranks (the reward model's training pairs)."""
        cfg = self.preset.reward
        return prompt_mix(self.world, cfg.n_prompts, self.seed("preferences"), self.material["preferences"],
                          cfg.task_share, self.spec, self.reserved)

    def refresh(self, round_: int) -> list[TaskExample]:
        """Iterated RLHF, round `round_`: fresh prompts (preference material) for new comparisons."""
        cfg = self.preset.ppo
        return prompt_mix(self.world, cfg.refresh_prompts, self.seed("refresh", round_), self.material["preferences"],
                          cfg.task_share, self.spec, self.reserved)

    def dpo_round(self, round_: int, n: int | None = None) -> list[TaskExample]:
        """Iterated DPO, round `round_`: `n` (preset.dpo.round_prompts) fresh prompts of the
        preference material, whose answers by the round's starting policy the labeler ranks."""
        return prompt_mix(self.world, n or self.preset.dpo.round_prompts, self.seed("dpo_round", round_),
                          self.material["preferences"], self.preset.reward.task_share, self.spec, self.reserved)

    @cached_property
    def ppo(self) -> list[TaskExample]:
        """The prompts PPO samples its episodes from."""
        cfg = self.preset.ppo
        return prompt_mix(self.world, cfg.n_prompts, self.seed("ppo"), self.material["ppo"], cfg.task_share,
                          self.spec, self.reserved)

    @cached_property
    def ptx(self) -> list[TaskExample]:
        """PPO-ptx's demonstrations: task examples only (the mixture's confident answers to
        alignment prompts would pull against PPO), none of them an evaluation prompt."""
        rng = random.Random(self.seed("ptx"))
        clusters = self.spec.train_clusters
        weights = [CLUSTER_WEIGHTS.get(c, 1) for c in clusters]
        return [task_example(self.world, rng.choices(clusters, weights)[0], rng, self.reserved)
                for _ in range(self.preset.sft.n_train)]

    def tools_train(self, n: int | None = None, split: str = "tools") -> list[TaskExample]:
        """The tool fine-tune's examples: a `tools.tool_share` share are demonstrations with a call
        (`toolbox.tool_demonstration`) — arithmetic with operands of one to three digits, up to
        tools.max_operand, each answer format alike, and counting, held-in templates only — and
        the rest the SFT mixture's examples of every other cluster and of the alignment
        material, answered as before. No evaluation prompt among them."""
        cfg = self.preset.tools
        n = cfg.train.n_train if n is None else n
        rng = random.Random(self.seed(split))
        # operands up to 9, up to 99, and (half of all) up to tools.max_operand: drawn uniformly up to 999 alone, nearly
        # all would have three digits, and the model would write three digits for "7 + 8"
        ranges = [min(9, cfg.max_operand), min(99, cfg.max_operand), cfg.max_operand, cfg.max_operand]
        worlds = [replace(self.world, max_operand=m) for m in ranges]
        # each answer format alike: "... and give the number." is one held-in template in ten, and a model that
        # rarely sees "[calc(...) -> 1276] 1276" answers it with a sentence or a miscopied number
        formats = {cluster: [[t for t in heldin_templates(cluster) if template_of(cluster, t)[1] == key]
                             for key in dict.fromkeys(template_of(cluster, t)[1] for t in heldin_templates(cluster))]
                   for cluster in TOOL_CLUSTERS}
        n_tool, demos = round(n * cfg.tool_share), []
        while len(demos) < n_tool:
            cluster = TOOL_CLUSTERS[len(demos) % len(TOOL_CLUSTERS)]
            world = worlds[len(demos) // 2 % len(worlds)] if cluster == "arithmetic" else self.world
            # every operand range in each answer format
            form = formats[cluster][len(demos) // 2 // len(worlds) % len(formats[cluster])]
            example = make_example(world, cluster, rng, template=rng.choice(form))
            if example.instruction not in self.reserved:
                demos.append(tool_demonstration(example))
        mixture = self.sft_train() if split == "tools" else self.sft_val()
        others = [e for e in mixture if e.cluster not in TOOL_CLUSTERS][: n - n_tool]
        examples = demos + others
        rng.shuffle(examples)
        return examples

    def tools_val(self) -> list[TaskExample]:
        return self.tools_train(self.preset.tools.train.n_val, split="tools_val")

    def grpo_train(self, clusters: tuple[str, ...] | None = None, n: int | None = None) -> list[TaskExample]:
        """GRPO's training prompts: `n` tasks (preset.grpo.n_prompts) of `clusters`
        (preset.grpo.clusters) in held-in templates, none of them an evaluation prompt. Every
        stage is judged on held-out prompts, in held-in and in held-out templates."""
        cfg = self.preset.grpo
        clusters, n = tuple(cfg.clusters if clusters is None else clusters), cfg.n_prompts if n is None else n
        unknown = [c for c in clusters if c not in self.spec.train_clusters]
        if unknown or not clusters:
            raise ValueError(f"GRPO clusters {unknown or '(none)'} are not training clusters; valid: "
                             f"{', '.join(self.spec.train_clusters)}")
        rng = random.Random(self.seed("grpo"))
        return [task_example(self.world, clusters[i % len(clusters)], rng, self.reserved) for i in range(n)]

    def grpo_curve(self, clusters: tuple[str, ...] | None = None, n: int | None = None) -> list[TaskExample]:
        """The prompts GRPO's live curve is drawn on: the first `n` (preset.grpo.n_curve_prompts)
        of each of `clusters` in `sft_eval["heldin_template"]`, the evaluation set the report
        measures on (the curve only shows; nothing is chosen by it)."""
        cfg = self.preset.grpo
        clusters, n = tuple(cfg.clusters if clusters is None else clusters), cfg.n_curve_prompts if n is None else n
        return [e for c in clusters for e in [e for e in self.sft_eval["heldin_template"] if e.cluster == c][:n]]

    def seen_alignment(self, n: int = 150) -> list[TaskExample]:
        """Alignment prompts from PPO's *training* material (its names, the training templates):
        not an evaluation set. Beside the held-out figures, they show what was memorised."""
        rng = random.Random(self.seed("ppo"))
        return [alignment_example(self.material["ppo"], ALIGNMENT_KINDS[i % 3], rng, hedge=False) for i in range(n)]

    def training_sets(self) -> dict[str, list[TaskExample]]:
        """Every training set by name (the sets a stage takes gradients on, or validates on)."""
        sets = {"sft_train": self.sft_train(), "sft_val": self.sft_val(), "preferences": self.preferences,
                "ppo": self.ppo, "ptx": self.ptx}
        sets.update({f"refresh.{r}": self.refresh(r) for r in self.rounds})
        sets.update({f"dpo_round.{r}": self.dpo_round(r) for r in self.dpo_rounds})
        sets.update({"tools_train": self.tools_train(), "tools_val": self.tools_val()})
        sets.update({f"grpo.{'+'.join(c)}": self.grpo_train(c) for c in self.grpo_cluster_sets})
        return sets


def overlap(evaluation: list[TaskExample], training: dict[str, list[TaskExample]]) -> int:
    """How many evaluation prompts appear, word for word, in any of the training sets."""
    seen = {e.instruction for examples in training.values() for e in examples}
    return sum(e.instruction in seen for e in evaluation)


def data_splits(preset: Preset) -> DataSplits:
    """The `DataSplits` of a preset, built once per process and shared by every stage."""
    return _data_splits(check_preset(preset))


@lru_cache(maxsize=8)
def _data_splits(preset: Preset) -> DataSplits:
    return DataSplits(preset)
