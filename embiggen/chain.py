"""The chain — pretraining → SFT → reward model → PPO — each stage's model trained once and cached.

Every stage follows one pattern (`embiggen.lm.training`):

    path  = cache_dir(stage, preset, <everything that decides the weights>)
    model = train_or_load(path, load, train)

The key holds the stage's *training* config, the folder names of the models it starts from,
and, from SFT on, `DataSplits.fingerprint` (the held-out prompts that training skips). The
preset's `evaluation` and `experiments` configs are in no key: changing what is measured
never retrains anything.

A stage receives the models it starts from (`base=`, `sft=`, `reward=`); given none, it asks
for them with the same functions, so every notebook can start anywhere, in any order, and
`embiggen run` loads each model once and hands it on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path


from embiggen.data.mixture import MIXTURE_VERSION
from embiggen.data.splits import build_corpus, build_world, data_splits
from embiggen.data.tasks import TaskExample
from embiggen.data.world import WORLD_VERSION, World
from embiggen.judging.evaluate import evaluate_tasks
from embiggen.judging.labeler import Labeler
from embiggen.judging.preferences import collect_preferences, pairs_jsonl, read_pairs
from embiggen.judging.verifiers import VerifierReward, verifier_for
from embiggen.lm.model import build_model, check_context, load_pretrained
from embiggen.lm.tokenizer import train_tokenizer
from embiggen.lm.training import TrainLog, cache_dir, load_checkpoint, resume_dir, save_checkpoint, train_or_load
from embiggen.methods.dpo import train_dpo
from embiggen.methods.expert_iteration import expert_iteration
from embiggen.methods.grpo import GRPOLog, GRPOTrainer, json_rows, train_grpo
from embiggen.methods.kto import judged_answers, train_kto
from embiggen.methods.orpo import train_orpo
from embiggen.methods.ppo import PPOLog, PPOTrainer, train_ppo
from embiggen.methods.pretrain import estimate_loss, pretrain, tokenize_corpus
from embiggen.methods.reward import RewardModel, fit_reward_model, load_pairs, load_reward_model, reward_model_round
from embiggen.methods.reward_ensemble import RewardEnsemble
from embiggen.methods.sft import SFTData, encode_example, sft
from embiggen.methods.simpo import train_simpo
from embiggen.methods.tools import encode_tool_example
from embiggen.presets import DPOConfig, GRPOConfig, ModelConfig, PPOConfig, Preset, check_preset
from embiggen.utils import atomic_dir, atomic_write_text, config_key, pick_device, read_only, set_seed

#: Bump when a stage's code changes what it trains, so cached models of older code are not reused.
REWARD_VERSION = 8  # preference collection, the labeler or the reward model (8: its declines in ordinary rankings)
PPO_VERSION = 3  # 3: every token drawn with its own seeded uniform (the same rollout on any number of processes)
DPO_VERSION = 2  # 2: IPO on per-token log-ratios
TOOLS_VERSION = 1
GRPO_VERSION = 3  # 2: each prompt's G answers sampled from one reading of it; 3: every token drawn with its own seeded uniform
VERIFIED_BASELINES_VERSION = 1  # expert iteration and PPO on the verifier


@dataclass
class StageModel:
    """A trained language model of the chain, with what it was made from."""
    model: object        # a Hugging Face causal LM
    tokenizer: object
    world: World
    preset: Preset
    log: object          # TrainLog (PPO: PPOLog, one row of statistics per step)
    info: dict           # what train_log.json holds: timings, sizes, where it came from
    path: Path           # its folder in the cache

    @property
    def params(self) -> int:
        return self.model.num_parameters()


# ---------------------------------------------------------------------------------------
# Step 1: the base model
# ---------------------------------------------------------------------------------------
def train_or_load_base(preset: Preset, model_cfg: ModelConfig | None = None,
                       steps: int | None = None, force: bool = False, progress: bool = True, callback=None,
                       device=None) -> StageModel:
    """The base model of `preset`: a tokenizer and a model trained from scratch on the world's
    corpus. `model_cfg` and `steps` change the shape and step count (notebook 1's size sweep).
    With preset.base_model set, that pretrained causal LM instead (`load_base_model`)."""
    check_preset(preset)
    device = device or pick_device()
    if preset.base_model and model_cfg is None and steps is None:
        return load_base_model(preset, device)
    model_cfg = model_cfg or preset.model
    cfg = preset.pretrain if steps is None else replace(preset.pretrain, steps=steps)
    world = build_world(preset)
    path = cache_dir("base", preset, WORLD_VERSION, preset.seed, preset.n_people, preset.n_unknown, preset.max_operand,
                     preset.train_documents, preset.val_documents, preset.vocab_size, asdict(model_cfg), asdict(cfg))

    def load(path):
        model, tokenizer, info, log = load_checkpoint(path, device)
        return StageModel(model, tokenizer, world, preset, log, info, path)

    def train(path):
        started = time.perf_counter()
        set_seed(preset.seed)
        train_docs, val_docs = build_corpus(preset, world)
        tokenizer = train_tokenizer(train_docs, preset.vocab_size)
        train_data, val_data = tokenize_corpus(tokenizer, train_docs), tokenize_corpus(tokenizer, val_docs)
        model = build_model(model_cfg, tokenizer, seed=preset.seed)
        log = pretrain(model, train_data, val_data, cfg, device=device, seed=preset.seed, callback=callback,
                       progress=progress, resume_dir=resume_dir(path), desc=f"pretrain {preset.name}",
                       tokenizer=tokenizer, sample_prompts=sample_prompts(world))
        info = {"preset": preset.name, "seed": preset.seed, "params": model.num_parameters(),
                "corpus_tokens": len(train_data), "val_tokens": len(val_data),
                "train_tokens": log.tokens, "train_seconds": round(time.perf_counter() - started + log.resumed_seconds, 2),
                "loop_seconds": round(log.seconds, 2), "tokens_per_second": round(log.tokens_per_second, 1),
                "val_loss": log.val_loss[-1], "model_config": asdict(model_cfg), "device": str(device)}
        save_checkpoint(path, model, tokenizer, info, log)
        return StageModel(model.eval(), tokenizer, world, preset, log, info, path)

    return train_or_load(path, load, train, force)


def sample_prompts(world: World) -> tuple[str, ...]:
    """The prompts whose greedy continuations pretraining records at every evaluation (notebook 1
    shows them getting better): a fact, a sum written as prose, a story's opening."""
    return (f"{world.people[0].name} lives in", "The sum of 12 and 7 is", "Once upon a time,")


def load_base_model(preset: Preset, device=None) -> StageModel:
    """preset.base_model, a pretrained causal LM, as the chain's base model: loaded offline from
    safetensors (`model.load_pretrained`, which also gives it a pad token and, where it has none,
    a chat template), never trained here. Its `path` is a name in the cache that carries a hash
    of its weights, so every later stage's cache key changes with the model; `info["source"]`
    is where it was loaded from. Its loss on the world's held-out text is measured once (it never
    read about the world)."""
    started = time.perf_counter()
    device = device or pick_device()
    name = preset.base_model
    model, tokenizer = load_pretrained(name, device=device)
    lengths = {"pretrain.seq_len": preset.pretrain.seq_len, "sft.max_length": preset.sft.max_length,
               "dpo.max_length": preset.dpo.max_length, "tools.train.max_length": preset.tools.train.max_length}
    check_context(model, lengths, name=str(name))
    source = Path(name).resolve() if Path(name).is_dir() else name
    world = build_world(preset)
    path = cache_dir("base", preset, "pretrained", model_fingerprint(name, model),
                     tag=f"pretrained-{Path(str(name).rstrip('/')).name}")
    measured = path / "measured.json"  # the model is not copied into the cache; what was measured of it is
    if measured.exists():
        val_loss = json.loads(measured.read_text())["val_loss"]
    else:
        _, val_docs = build_corpus(preset, world)
        windows = replace(preset.pretrain, eval_batches=min(preset.pretrain.eval_batches, 4), batch_size=8)
        val_loss = estimate_loss(model, tokenize_corpus(tokenizer, val_docs), windows, device)
        try:
            atomic_write_text(measured, json.dumps({"val_loss": val_loss}))
        except OSError as exc:  # a read-only cache: measured again next time
            if not read_only(exc):
                raise
    info = {"preset": preset.name, "seed": preset.seed, "params": model.num_parameters(), "source": str(source),
            "train_tokens": 0, "train_seconds": 0.0, "load_seconds": round(time.perf_counter() - started, 2),
            "tokens_per_second": None, "val_loss": val_loss, "device": str(device)}
    log = TrainLog()
    return StageModel(model.eval(), tokenizer, world, preset, log, info, path)


def model_fingerprint(name: str, model) -> str:
    """What identifies a pretrained model in cache keys: a hash of its weight files' bytes (a
    local folder), else its hub name and the commit it was loaded from."""
    folder = Path(name)
    if not folder.is_dir():
        return f"{name}@{getattr(model.config, '_commit_hash', None)}"
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# Step 2: instruction tuning
# ---------------------------------------------------------------------------------------
def train_or_load_sft(preset: Preset, clusters: list[str] | None = None, steps: int | None = None,
                      base: StageModel | None = None, force: bool = False, progress: bool = True, callback=None,
                      device=None) -> StageModel:
    """The SFT model of `preset`, fine-tuned from a copy of the base model on the instruction
    mixture (every evaluation prompt left out). `clusters` and `steps` serve FLAN's ablation."""
    check_preset(preset)
    device = device or pick_device()
    splits = data_splits(preset)
    everything = splits.spec.train_clusters
    clusters = everything if clusters is None else list(clusters)
    cfg = preset.sft if steps is None else replace(preset.sft, steps=steps)
    base = base or train_or_load_base(preset, progress=progress, device=device)
    path = cache_dir("sft", preset, MIXTURE_VERSION, splits.fingerprint, base.path.name, asdict(cfg), sorted(clusters),
                     tag="all" if clusters == everything else f"{len(clusters)}clusters")

    def examples():
        return splits.sft_train(clusters), splits.sft_val(clusters)

    def replay():  # pretraining text mixed into each batch
        if cfg.replay_share <= 0:
            return None
        train_docs, _ = build_corpus(preset, base.world)
        return tokenize_corpus(base.tokenizer, train_docs[: cfg.replay_documents])

    return fine_tuned(preset, base, path, examples, cfg, f"sft {preset.name}",
                      {"clusters": clusters, "base": base.path.name}, replay=replay, force=force, progress=progress,
                      callback=callback, device=device)


def fine_tuned(preset: Preset, start: StageModel, path: Path, examples, cfg, desc: str, info: dict, replay=None,
               encode=encode_example, force: bool = False, progress: bool = True, callback=None,
               device=None) -> StageModel:
    """A copy of `start` (which stays untouched) fine-tuned with SFT's loss, cached at `path`:
    the SFT and tools stages. `examples()` gives the (train, validation) examples and
    `replay()` the pretraining text to mix in (or None); both are called only to train.
    `info` adds the stage's own entries to what is saved beside the weights."""

    def load(path):
        model, tokenizer, saved, log = load_checkpoint(path, device)
        return StageModel(model, tokenizer, start.world, preset, log, saved, path)

    def train(path):
        started = time.perf_counter()
        set_seed(preset.seed)
        model = copy.deepcopy(start.model).to(device)
        train_examples, val_examples = examples()
        log = sft(model, start.tokenizer, train_examples, val_examples, cfg, device=device, seed=preset.seed,
                  callback=callback, progress=progress, resume_dir=resume_dir(path), desc=desc,
                  replay=replay() if replay else None, encode=encode)
        saved = {"preset": preset.name, "seed": preset.seed, "params": model.num_parameters(), **info,
                 "n_train": len(train_examples), "train_tokens": log.tokens,
                 "train_seconds": round(time.perf_counter() - started + log.resumed_seconds, 2),
                 "val_loss": log.val_loss[-1],
                 "device": str(device)}
        save_checkpoint(path, model, start.tokenizer, saved, log)
        return StageModel(model.eval(), start.tokenizer, start.world, preset, log, saved, path)

    return train_or_load(path, load, train, force)


# ---------------------------------------------------------------------------------------
# Step 3a: preferences and the reward model
# ---------------------------------------------------------------------------------------
def labeler_for(preset: Preset) -> Labeler:
    """The labeler whose rankings train reward models: the gold labeler with the preset's noise."""
    return Labeler(noise=preset.reward.label_noise)


#: The reward config's fields that decide the collected preferences (the rest only train on them).
COLLECTION_FIELDS = ("n_prompts", "k", "task_share", "temperature", "max_new_tokens", "label_noise", "n_norm_prompts",
                     "written_answers", "written_refusals", "written_misreadings")


def preference_data(preset: Preset, sft_model: StageModel, progress: bool = True) -> dict:
    """Preference pairs collected from the SFT model: train pairs from the training prompts
    (the noisy labeler) and held-out pairs from evaluation prompts (`embiggen.data.splits`; labelled
    without noise, so accuracy is measured against the gold preference), and the SFT samples
    of some *training* prompts that set the reward scale. Cached on their own, so retraining
    the reward model with other settings does not sample everything again."""
    check_preset(preset)
    cfg, splits = preset.reward, data_splits(preset)
    collection = {k: getattr(cfg, k) for k in COLLECTION_FIELDS}
    folder = cache_dir("preferences", preset, REWARD_VERSION, splits.fingerprint, sft_model.path.name, collection)

    def load(folder):
        return {"train_pairs": read_pairs(folder / "train_pairs.jsonl"),
                "eval_pairs": read_pairs(folder / "eval_pairs.jsonl"),
                "norm_samples": json.loads((folder / "norm_samples.json").read_text()),
                "collect_seconds": json.loads((folder / "done.json").read_text())["collect_seconds"]}

    return train_or_load(folder, load, lambda folder: _collect_preferences(preset, sft_model, folder, progress))


def _collect_preferences(preset: Preset, sft_model: StageModel, folder: Path, progress: bool) -> dict:
    cfg, splits = preset.reward, data_splits(preset)
    collection = {k: getattr(cfg, k) for k in COLLECTION_FIELDS}
    started = time.perf_counter()
    sample = dict(k=cfg.k, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, written=cfg.written_answers)
    # the labeler's declines go into the training rankings only: the held-out pairs stay the samples' own
    # (with the hedge the samples cannot give), so held-out accuracy is not padded with easy pairs
    train = collect_preferences(sft_model.model, sft_model.tokenizer, splits.preferences, labeler_for(preset),
                                seed=splits.sample_seed("preferences"), written_refusals=cfg.written_refusals,
                                written_misreadings=cfg.written_misreadings, **sample,
                                desc=f"preferences: {cfg.k} answers to each of {len(splits.preferences):,} prompts"
                                if progress else None)
    held = collect_preferences(sft_model.model, sft_model.tokenizer, splits.rm_eval, Labeler(),
                               seed=splits.sample_seed("rm_eval"), **sample,
                               desc="held-out preferences" if progress else None)
    norm = [{"instruction": e.instruction, "samples": ys, "finished": fs}
            for e, ys, fs in list(zip(train.prompts, train.samples, train.finished))[: cfg.n_norm_prompts]]
    seconds = round(time.perf_counter() - started, 2)
    with atomic_dir(folder) as tmp:
        (tmp / "train_pairs.jsonl").write_text(pairs_jsonl(train.pairs))
        (tmp / "eval_pairs.jsonl").write_text(pairs_jsonl(held.pairs))
        (tmp / "norm_samples.json").write_text(json.dumps(norm))
        (tmp / "done.json").write_text(json.dumps({**collection, "collect_seconds": seconds}))
    return {"train_pairs": train.pairs, "eval_pairs": held.pairs, "norm_samples": norm, "collect_seconds": seconds}


def train_or_load_reward(preset: Preset, sft: StageModel | None = None, force: bool = False,
                         progress: bool = True, device=None, member: int = 0) -> RewardModel:
    """The reward model of `preset`: preferences collected from the SFT model, Bradley-Terry
    training from the SFT weights, scores normalised on SFT samples. The train and held-out
    pairs are kept beside the weights (`train_pairs.jsonl`, `eval_pairs.jsonl`). `member` > 0:
    another reward model on the same pairs, its head and batch order drawn from another seed
    (an ensemble's member; member 0 is the stage's own)."""
    check_preset(preset)
    cfg = preset.reward
    device = device or pick_device()
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    path = cache_dir("reward", preset, REWARD_VERSION, data_splits(preset).fingerprint, sft.path.name, asdict(cfg),
                     *((member,) if member else ()), tag=f"member{member}" if member else "")
    seed = preset.seed + 1000 * member

    def train(path):
        set_seed(seed)
        data = preference_data(preset, sft, progress=progress)
        rm = fit_reward_model(sft.path, sft.tokenizer, data["train_pairs"], data["eval_pairs"], data["norm_samples"],
                              cfg, path, seed=seed, progress=progress, device=device,
                              desc=f"reward model {preset.name}" + (f" member {member}" if member else ""))
        rm.info.update({"preset": preset.name, "seed": seed, "member": member, "n_prompts": cfg.n_prompts,
                        "collect_seconds": data["collect_seconds"]})  # sampling K answers per prompt and ranking them
        save_checkpoint(path, rm.model, rm.tokenizer, rm.info, rm.log,
                        extra_files={"train_pairs.jsonl": pairs_jsonl(data["train_pairs"]),
                                     "eval_pairs.jsonl": pairs_jsonl(data["eval_pairs"])})
        return rm

    return train_or_load(path, lambda path: load_reward_model(path, device), train, force)


def train_or_load_reward_ensemble(preset: Preset, sft: StageModel | None = None, members: int = 3,
                                  mode: str = "uwo", lam: float = 1.0, progress: bool = True,
                                  device=None) -> RewardEnsemble:
    """`members` reward models on the same pairs (the stage's own and members - 1 more, each
    cached), combined conservatively (`methods.reward_ensemble`)."""
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    return RewardEnsemble([train_or_load_reward(preset, sft=sft, progress=progress, device=device, member=i)
                           for i in range(members)], mode, lam)


# ---------------------------------------------------------------------------------------
# Step 3b: PPO, with the reward model retrained between rounds (iterated RLHF)
# ---------------------------------------------------------------------------------------
def ppo_config(preset: Preset, kl_coef: float | None = None, steps: int | None = None, lr: float | None = None,
               rounds: int | None = None, value_model: str | None = None) -> PPOConfig:
    """The preset's PPO config with some knobs changed (the reward-hacking sweep's, the critic's start)."""
    cfg = preset.ppo
    changes = {k: v for k, v in {"kl_coef": kl_coef, "steps": steps, "rounds": rounds,
                                 "value_model": value_model}.items() if v is not None}
    if lr is not None:
        changes["optim"] = replace(cfg.optim, lr=lr)
    return replace(cfg, **changes)


def ppo_trainer(preset: Preset, cfg: PPOConfig, sft_model: StageModel, reward_model: RewardModel,
                device=None) -> PPOTrainer:
    """A PPOTrainer whose policy starts as a copy of the SFT model, anchored to the SFT model itself
    (the frozen reference), with PPO-ptx's task demonstrations if cfg.ptx_coef > 0."""
    set_seed(preset.seed)
    ptx_data = None
    if cfg.ptx_coef > 0:  # task demonstrations only, none of them an evaluation prompt (see embiggen.data.splits)
        ptx_data = SFTData(sft_model.tokenizer, data_splits(preset).ptx,  # whole batches: PPO is not split
                           replace(preset.sft, batch_size=cfg.ptx_batch_size, replay_share=0.0), sharded=False)
    return PPOTrainer(copy.deepcopy(sft_model.model), sft_model.model, sft_model.tokenizer, reward_model, Labeler(),
                      cfg, device=device, seed=preset.seed, ptx_data=ptx_data)


def refresh_reward_model(preset: Preset, cfg: PPOConfig, trainer: PPOTrainer, sft_model: StageModel,
                         first_rm: RewardModel, round_: int, progress: bool = True) -> RewardModel:
    """Round `round_` of iterated RLHF (`reward.reward_model_round`) for the policy `trainer`
    holds, cached beside the first reward model; the trainer optimises the new one from now on."""
    splits, rcfg = data_splits(preset), preset.reward
    path = cache_dir("reward", preset, "round", first_rm.path.name, asdict(cfg), round_, tag=f"round{round_}")

    def train(path):
        sft_data = preference_data(preset, sft_model, progress=False)  # cached: held-out pairs and SFT samples
        rm, pairs, held = reward_model_round(
            trainer.policy.lm, trainer.tokenizer, sft_model.path, load_pairs(trainer.reward_model, "train"),
            splits.refresh(round_), splits.refresh_eval(round_), labeler_for(preset), rcfg,
            sampling=dict(k=rcfg.k, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                          written=rcfg.written_answers, written_refusals=rcfg.written_refusals,
                          written_misreadings=rcfg.written_misreadings),
            seeds=(splits.sample_seed("refresh", round_), splits.sample_seed("refresh_eval", round_), preset.seed),
            norm_samples=sft_data["norm_samples"], sft_eval_pairs=sft_data["eval_pairs"], path=path,
            progress=progress, desc=f"reward model {preset.name} round {round_}")
        rm.info.update({"preset": preset.name, "seed": preset.seed, "round": round_})
        save_checkpoint(path, rm.model, rm.tokenizer, rm.info, rm.log,
                        extra_files={"train_pairs.jsonl": pairs_jsonl(pairs), "eval_pairs.jsonl": pairs_jsonl(held)})
        return rm

    trainer.reward_model = train_or_load(path, lambda path: load_reward_model(path, trainer.device), train)
    return trainer.reward_model


def train_or_load_ppo(preset: Preset, kl_coef: float | None = None, steps: int | None = None,
                      lr: float | None = None, rounds: int | None = None, sft: StageModel | None = None,
                      reward: RewardModel | None = None, force: bool = False, progress: bool = True, callback=None,
                      device=None, value_model: str | None = None) -> StageModel:
    """The PPO policy of `preset` (optionally with another KL coefficient, step count, learning
    rate or number of rounds, for the reward-hacking sweep, or another start for its critic),
    trained from the SFT model against the reward model, which is retrained between rounds on
    the policy's own samples."""
    check_preset(preset)
    cfg = ppo_config(preset, kl_coef, steps, lr, rounds, value_model)
    device = device or pick_device()
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    reward = reward or train_or_load_reward(preset, sft=sft, progress=progress, device=device)
    path = cache_dir("ppo", preset, PPO_VERSION, data_splits(preset).fingerprint, reward.path.name, asdict(cfg),
                     tag=f"beta{cfg.kl_coef:g}")

    def load(path):
        return load_logged_stage(path, device, sft, preset, "ppo_log", PPOLog)

    def train(path):
        started = time.perf_counter()
        trainer = ppo_trainer(preset, cfg, sft, reward, device)
        refresh_at = tuple(cfg.steps * r // cfg.rounds for r in range(1, cfg.rounds))
        log = train_ppo(trainer, data_splits(preset).ppo, cfg.steps, cfg.batch_size, seed=preset.seed,
                        progress=progress, callback=callback, desc=f"ppo {preset.name} beta={cfg.kl_coef:g}",
                        resume_dir=resume_dir(path), save_every=cfg.save_every, refresh_at=refresh_at,
                        refresh=lambda t, r: refresh_reward_model(preset, cfg, t, sft, reward, r, progress))
        model = trainer.policy.lm.eval()
        info = {"preset": preset.name, "seed": preset.seed, "kl_coef": cfg.kl_coef, "steps": cfg.steps,
                "episodes": cfg.steps * cfg.batch_size,
                "train_seconds": round(time.perf_counter() - started + log.resumed_seconds, 2),  # earlier processes' too
                "reward_model": reward.path.name, "final_reward_model": trainer.reward_model.path.name,
                "rounds": cfg.rounds, "refresh_at": list(refresh_at), "device": str(device)}
        save_checkpoint(path, model, sft.tokenizer, {**info, "ppo_log": log.rows}, TrainLog())
        return StageModel(model, sft.tokenizer, sft.world, preset, log, info, path)

    return train_or_load(path, load, train, force)


def load_logged_stage(path: Path, device, start: StageModel, preset: Preset, key: str, log_class) -> StageModel:
    """A cached RL stage (PPO, GRPO) whose per-step rows were saved in its train_log.json under `key`."""
    model, tokenizer, info, _ = load_checkpoint(path, device)
    rows = info.pop(key)
    return StageModel(model, tokenizer, start.world, preset, log_class([r["step"] for r in rows], rows), info, path)


def final_reward_model(tuned: StageModel, first_rm: RewardModel) -> RewardModel:
    """The reward model a PPO run optimised in its last round (the first one if it ran one round)."""
    name = tuned.info.get("final_reward_model", first_rm.path.name)
    if name == first_rm.path.name:
        return first_rm
    return load_reward_model(first_rm.path.parent / name, next(first_rm.model.parameters()).device)


# ---------------------------------------------------------------------------------------
# Step 3, without a reward model: DPO on the same preference pairs
# ---------------------------------------------------------------------------------------
def train_or_load_dpo(preset: Preset, sft: StageModel | None = None, cfg: DPOConfig | None = None,
                      force: bool = False, progress: bool = True, device=None, round_: int | None = None) -> StageModel:
    """The DPO model of `preset`: a copy of the SFT model trained with the DPO loss on the very
    preference pairs the reward model learned from (the SFT model's samples, ranked by the
    noisy labeler), the SFT model as the reference. `cfg` overrides preset.dpo (a beta sweep).

    With cfg.rounds > 1, iterated (online) DPO, the counterpart of iterated RLHF: round r
    starts from round r - 1's model, which answers fresh prompts (`round_pairs`); the labeler
    ranks those answers and round r trains on the new pairs, still against the SFT model.
    The rounds share cfg.steps; each round is cached, so an interrupted run keeps the rounds
    it finished. `round_` picks a round (default: the last)."""
    check_preset(preset)
    cfg = cfg or preset.dpo
    round_ = cfg.rounds if round_ is None else round_
    if not 1 <= round_ <= cfg.rounds:
        raise ValueError(f"round_ must be between 1 and cfg.rounds = {cfg.rounds}, got {round_}")
    device = device or pick_device()
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    collection = {k: getattr(preset.reward, k) for k in COLLECTION_FIELDS}
    iterated = cfg.rounds > 1
    path = cache_dir("dpo", preset, DPO_VERSION, REWARD_VERSION, data_splits(preset).fingerprint, sft.path.name,
                     collection, asdict(cfg), *((round_,) if iterated else ()),
                     tag=f"beta{cfg.beta:g}" + (f"-round{round_}" if iterated else ""))

    def load(path):
        model, tokenizer, info, log = load_checkpoint(path, device)
        return StageModel(model, tokenizer, sft.world, preset, log, info, path)

    def train(path):
        start, earlier = sft, 0.0
        if round_ > 1:  # the previous round (cached, or trained now and timed on its own)
            start = train_or_load_dpo(preset, sft, cfg, progress=progress, device=device, round_=round_ - 1)
            earlier = start.info["train_seconds"]
        started = time.perf_counter()
        data = preference_data(preset, sft, progress=progress)
        # round 1: the SFT model's pairs; later rounds: the previous round's answers to fresh prompts, ranked
        pairs = data["train_pairs"] if round_ == 1 else round_pairs(preset, cfg, start, round_, progress)
        set_seed(preset.seed + round_ - 1)
        model = copy.deepcopy(start.model).to(device)  # the policy; the SFT model itself is the frozen reference
        ptx_data = (SFTData(sft.tokenizer, data_splits(preset).ptx,  # the demonstrations PPO-ptx uses
                            replace(preset.sft, batch_size=cfg.ptx_batch_size, replay_share=0.0))
                    if cfg.ptx_coef > 0 else None)
        steps = cfg.steps * round_ // cfg.rounds - cfg.steps * (round_ - 1) // cfg.rounds  # this round's share
        # with LoRA, round 1's reference is the policy itself with its adapters off (it starts as the SFT model)
        reference = None if cfg.optim.lora.rank and round_ == 1 else sft.model
        log = train_dpo(model, reference, sft.tokenizer, pairs, data["eval_pairs"], replace(cfg, steps=steps),
                        device=device, seed=preset.seed + round_ - 1, progress=progress, resume_dir=resume_dir(path),
                        desc=f"dpo {preset.name} beta={cfg.beta:g}"
                        + (f" round {round_}/{cfg.rounds}" if iterated else ""),
                        ptx_data=ptx_data)
        info = {"preset": preset.name, "seed": preset.seed, "beta": cfg.beta, "loss_type": cfg.loss_type,
                "n_pairs": len(pairs), "n_eval_pairs": len(data["eval_pairs"]),
                # every round so far, its sampling and labelling included
                "train_seconds": round(earlier + time.perf_counter() - started + log.resumed_seconds, 2),
                "sft": sft.path.name,
                "device": str(device), "val_loss": log.val_loss[-1] if log.val_loss else None,
                "val_reward_accuracy": log.metrics.get("val_reward_accuracy", [None])[-1],
                "round": round_, "rounds": cfg.rounds, "steps": steps,
                "previous_round": start.path.name if round_ > 1 else None}
        save_checkpoint(path, model, sft.tokenizer, info, log,
                        extra_files={"train_pairs.jsonl": pairs_jsonl(pairs)} if round_ > 1 else None)
        return StageModel(model.eval(), sft.tokenizer, sft.world, preset, log, info, path)

    return train_or_load(path, load, train, force)


#: Bump when SimPO's, ORPO's or KTO's training changes what it trains.
RELATIVES_VERSION = 1
#: DPO's relatives: the stage name, its config's field of the preset, what its coefficient is called.
RELATIVES = {"simpo": "beta", "orpo": "lam", "kto": "beta"}


def train_or_load_relative(preset: Preset, method: str, sft: StageModel | None = None, cfg=None,
                           force: bool = False, progress: bool = True, device=None) -> StageModel:
    """One of DPO's relatives (`method`: 'simpo', 'orpo' or 'kto'), a copy of the SFT model
    trained on the very preferences DPO learns from: SimPO and ORPO on the same pairs (no
    reference model), KTO on the same answers judged one at a time by the labeler (thumbs up or
    down, `kto.judged_answers`), against the SFT model. `cfg` overrides the preset's (a sweep)."""
    check_preset(preset)
    if method not in RELATIVES:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(RELATIVES)}")
    cfg = cfg or getattr(preset, method)
    coefficient = getattr(cfg, RELATIVES[method])
    device = device or pick_device()
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    splits = data_splits(preset)
    collection = {k: getattr(preset.reward, k) for k in COLLECTION_FIELDS}
    path = cache_dir(method, preset, RELATIVES_VERSION, REWARD_VERSION, splits.fingerprint, sft.path.name,
                     collection, asdict(cfg), tag=f"{RELATIVES[method]}{coefficient:g}")

    def load(path):
        model, tokenizer, info, log = load_checkpoint(path, device)
        return StageModel(model, tokenizer, sft.world, preset, log, info, path)

    def train(path):
        started = time.perf_counter()
        data = preference_data(preset, sft, progress=progress)
        set_seed(preset.seed)
        model = copy.deepcopy(sft.model).to(device)
        common = dict(device=device, seed=preset.seed, progress=progress, resume_dir=resume_dir(path),
                      desc=f"{method} {preset.name} {RELATIVES[method]}={coefficient:g}")
        if method == "kto":  # the pairs' answers, each judged on its own (train: the noisy labeler; held out: gold)
            train_data = judged_answers(data["train_pairs"], splits.preferences, labeler_for(preset), preset.seed)
            held = judged_answers(data["eval_pairs"], splits.rm_eval, Labeler(), preset.seed)
            log = train_kto(model, sft.model, sft.tokenizer, train_data, held, cfg, **common)
            ups = sum(j.desirable for j in train_data)
            counts = {"n_answers": len(train_data), "n_desirable": ups, "n_eval_answers": len(held),
                      "desirable_weight": cfg.desirable_weight * ((len(train_data) - ups) / ups
                                                                  if cfg.balance and 0 < ups < len(train_data) else 1),
                      "val_judged_accuracy": log.metrics.get("val_judged_accuracy", [None])[-1]}
        else:
            train_fn = train_simpo if method == "simpo" else train_orpo
            log = train_fn(model, sft.tokenizer, data["train_pairs"], data["eval_pairs"], cfg, **common)
            counts = {"n_pairs": len(data["train_pairs"]), "n_eval_pairs": len(data["eval_pairs"]),
                      "val_reward_accuracy": log.metrics.get("val_reward_accuracy", [None])[-1]}
        info = {"preset": preset.name, "seed": preset.seed, "method": method, RELATIVES[method]: coefficient,
                **counts, "train_seconds": round(time.perf_counter() - started + log.resumed_seconds, 2),
                "sft": sft.path.name, "device": str(device), "val_loss": log.val_loss[-1] if log.val_loss else None}
        save_checkpoint(path, model, sft.tokenizer, info, log)
        return StageModel(model.eval(), sft.tokenizer, sft.world, preset, log, info, path)

    return train_or_load(path, load, train, force)


def train_or_load_simpo(preset: Preset, sft: StageModel | None = None, cfg=None, **kwargs) -> StageModel:
    """SimPO on DPO's pairs (`train_or_load_relative`)."""
    return train_or_load_relative(preset, "simpo", sft, cfg, **kwargs)


def train_or_load_orpo(preset: Preset, sft: StageModel | None = None, cfg=None, **kwargs) -> StageModel:
    """ORPO on DPO's pairs (`train_or_load_relative`)."""
    return train_or_load_relative(preset, "orpo", sft, cfg, **kwargs)


def train_or_load_kto(preset: Preset, sft: StageModel | None = None, cfg=None, **kwargs) -> StageModel:
    """KTO on DPO's answers, judged one at a time (`train_or_load_relative`)."""
    return train_or_load_relative(preset, "kto", sft, cfg, **kwargs)


def round_pairs(preset: Preset, cfg: DPOConfig, policy: StageModel, round_: int, progress: bool = True) -> list:
    """Iterated DPO's new pairs for round `round_`: K answers of `policy` (the previous round's
    model) to cfg.round_prompts fresh training prompts, ranked by the noisy labeler, as the
    reward model's collection ranks the SFT model's. Cached beside the preference pairs."""
    rcfg, splits = preset.reward, data_splits(preset)
    folder = cache_dir("preferences", preset, "dpo_round", REWARD_VERSION, splits.fingerprint, policy.path.name,
                       round_, cfg.round_prompts, {k: getattr(rcfg, k) for k in COLLECTION_FIELDS},
                       tag=f"dpo-round{round_}")

    def collect(folder):
        prompts = splits.dpo_round(round_, cfg.round_prompts)
        collected = collect_preferences(policy.model, policy.tokenizer, prompts, labeler_for(preset), k=rcfg.k,
                                        temperature=rcfg.temperature, max_new_tokens=rcfg.max_new_tokens,
                                        seed=splits.sample_seed("dpo_round", round_), written=rcfg.written_answers,
                                        written_refusals=rcfg.written_refusals,
                                        written_misreadings=rcfg.written_misreadings,
                                        desc=f"dpo round {round_}: {rcfg.k} answers to each of {len(prompts):,} prompts"
                                        if progress else None)
        with atomic_dir(folder) as tmp:
            (tmp / "train_pairs.jsonl").write_text(pairs_jsonl(collected.pairs))
        return collected.pairs

    return train_or_load(folder, lambda folder: read_pairs(folder / "train_pairs.jsonl"), collect)


# ---------------------------------------------------------------------------------------
# Step 4: RL with verifiable rewards (GRPO)
# ---------------------------------------------------------------------------------------
def grpo_curve_evaluator(preset: Preset, cfg: GRPOConfig, tokenizer):
    """What GRPO's live curve shows every cfg.eval_every steps: greedy accuracy on held-out-template
    prompts of the trained clusters (`DataSplits.grpo_curve`), overall and per cluster."""
    prompts = data_splits(preset).grpo_curve(cfg.clusters, cfg.n_curve_prompts)

    def evaluate(model) -> dict:
        started = time.perf_counter()
        result = evaluate_tasks(model, tokenizer, prompts, cfg.max_new_tokens)
        return {"eval_accuracy": result["accuracy"],
                **{f"eval_accuracy.{c}": v for c, v in result["per_cluster"].items()},
                "eval_seconds": time.perf_counter() - started}

    return evaluate


def train_or_load_grpo(preset: Preset, sft: StageModel | None = None, cfg: GRPOConfig | None = None,
                       force: bool = False, progress: bool = True, callback=None, device=None) -> StageModel:
    """The GRPO model of `preset`: a copy of the SFT model trained with GRPO on verifiable rewards
    (`cfg.verifier` on `cfg.clusters`' held-in-template prompts), the SFT model as the frozen
    reference (for the KL it measures, and for k3 if cfg.kl_coef > 0). `cfg` overrides
    preset.grpo (the loss-averaging variants, the loose verifier)."""
    check_preset(preset)
    cfg = cfg or preset.grpo
    device = device or pick_device()
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    splits = data_splits(preset)
    path = cache_dir("grpo", preset, GRPO_VERSION, splits.fingerprint, sft.path.name, asdict(cfg),
                     tag=f"{cfg.loss_type}-{cfg.verifier}")

    def load(path):
        return load_logged_stage(path, device, sft, preset, "grpo_log", GRPOLog)

    def train(path):
        set_seed(preset.seed)
        trainer = GRPOTrainer(copy.deepcopy(sft.model), sft.tokenizer, verifier_for(cfg.verifier), cfg,
                              ref_lm=sft.model, device=device, seed=preset.seed)
        desc = f"grpo {preset.name} {cfg.loss_type}" + ("" if cfg.verifier == "exact" else f", {cfg.verifier} verifier")
        log = train_grpo(trainer, splits.grpo_train(cfg.clusters, cfg.n_prompts), cfg.steps, seed=preset.seed,
                         progress=progress, callback=callback, desc=desc, eval_every=cfg.eval_every,
                         evaluate=grpo_curve_evaluator(preset, cfg, sft.tokenizer), resume_dir=resume_dir(path),
                         save_every=cfg.eval_every)
        model = trainer.policy.eval()
        # every step's sampling and update and every curve evaluation, of this process and of any it resumed
        seconds = sum(r.get("seconds", 0.0) + r.get("eval_seconds", 0.0) for r in log.rows)
        info = {"preset": preset.name, "seed": preset.seed, "steps": cfg.steps, "clusters": list(cfg.clusters),
                "loss_type": cfg.loss_type, "verifier": cfg.verifier,
                "answers_sampled": cfg.steps * cfg.prompts_per_step * cfg.group_size,
                "train_seconds": round(seconds, 2), "sft": sft.path.name, "device": str(device)}
        save_checkpoint(path, model, sft.tokenizer, {**info, "grpo_log": json_rows(log.rows)}, TrainLog())
        return StageModel(model, sft.tokenizer, sft.world, preset, log, info, path)

    return train_or_load(path, load, train, force)


def grpo_prompt_stream(preset: Preset, cfg: GRPOConfig) -> list[list[TaskExample]]:
    """The prompts of each of GRPO's steps, in order, as `train_grpo` draws them: the baselines
    (expert iteration, PPO with a critic) see exactly these prompts."""
    prompts, rng = data_splits(preset).grpo_train(cfg.clusters, cfg.n_prompts), random.Random(preset.seed)
    return [rng.sample(prompts, min(cfg.prompts_per_step, len(prompts))) for _ in range(cfg.steps)]


def train_or_load_expert_iteration(preset: Preset, sft: StageModel | None = None, force: bool = False,
                                   progress: bool = True, callback=None, device=None) -> StageModel:
    """Expert iteration on GRPO's verifier, prompts and number of sampled answers: GRPO's steps
    grouped into preset.experiments.ei_rounds rounds; each round samples group_size answers to
    its prompts, keeps the verified ones and fine-tunes on them. Its log's rows (one per round,
    round 0 before training) carry the live curve's held-out accuracy."""
    check_preset(preset)
    cfg, exp = preset.grpo, preset.experiments
    device = device or pick_device()
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    path = cache_dir("expert_iteration", preset, VERIFIED_BASELINES_VERSION, data_splits(preset).fingerprint,
                     sft.path.name, asdict(cfg), exp.ei_rounds, asdict(exp.ei_sft))

    def load(path):
        model, tokenizer, info, _ = load_checkpoint(path, device)
        return StageModel(model, tokenizer, sft.world, preset, info.pop("rounds_log"), info, path)

    def train(path):
        started = time.perf_counter()
        set_seed(preset.seed)
        model = copy.deepcopy(sft.model).to(device)
        stream = grpo_prompt_stream(preset, cfg)
        per_round = -(-len(stream) // exp.ei_rounds)
        rounds = [[e for step in stream[i: i + per_round] for e in step] for i in range(0, len(stream), per_round)]
        curve = grpo_curve_evaluator(preset, cfg, sft.tokenizer)
        rows = expert_iteration(model, sft.tokenizer, rounds, verifier_for(cfg.verifier), exp.ei_sft, cfg.group_size,
                                cfg.max_new_tokens, cfg.temperature, seed=preset.seed, device=device,
                                evaluate=curve, callback=callback,
                                progress=progress)
        info = {"preset": preset.name, "seed": preset.seed, "rounds": len(rounds), "sft": sft.path.name,
                "answers_sampled": rows[-1]["answers_sampled"],
                "train_seconds": round(time.perf_counter() - started, 2), "device": str(device)}
        save_checkpoint(path, model, sft.tokenizer, {**info, "rounds_log": json_rows(rows)}, TrainLog())
        return StageModel(model.eval(), sft.tokenizer, sft.world, preset, rows, info, path)

    return train_or_load(path, load, train, force)


def train_or_load_ppo_verified(preset: Preset, sft: StageModel | None = None, force: bool = False,
                               progress: bool = True, callback=None, device=None) -> StageModel:
    """PPO with its critic (value head, GAE) on GRPO's verifiable reward, prompts and number of
    sampled answers: one answer to each of prompts_per_step * group_size prompts per step, so
    every step samples as many answers as a GRPO step; GRPO's learning rate and KL coefficient
    (none by default), two epochs of two minibatches per batch, no PPO-ptx, one round. Its log's
    rows carry the live curve's held-out accuracy every grpo.eval_every steps."""
    check_preset(preset)
    g = preset.grpo
    answers = g.prompts_per_step * g.group_size
    cfg = replace(preset.ppo, steps=g.steps, batch_size=answers, minibatch_size=max(1, answers // 2), ppo_epochs=2,
                  optim=replace(preset.ppo.optim, lr=g.optim.lr), kl_coef=g.kl_coef, ptx_coef=0.0, rounds=1,
                  max_new_tokens=g.max_new_tokens, temperature=g.temperature, missing_eos_penalty=0.0)
    device = device or pick_device()
    sft = sft or train_or_load_sft(preset, progress=progress, device=device)
    path = cache_dir("ppo_verified", preset, PPO_VERSION, VERIFIED_BASELINES_VERSION, data_splits(preset).fingerprint,
                     sft.path.name, asdict(cfg), asdict(g))

    def load(path):
        return load_logged_stage(path, device, sft, preset, "ppo_log", PPOLog)

    def train(path):
        started = time.perf_counter()
        set_seed(preset.seed)
        prompts = data_splits(preset).grpo_train(g.clusters, g.n_prompts)
        trainer = PPOTrainer(copy.deepcopy(sft.model), sft.model, sft.tokenizer,
                             VerifierReward(verifier_for(g.verifier), prompts), Labeler(), cfg, device=device,
                             seed=preset.seed)
        curve = grpo_curve_evaluator(preset, g, sft.tokenizer)
        first = {"step": 0, **curve(trainer.policy.lm)}

        def on_step(step, row):
            if step % g.eval_every == 0 or step == cfg.steps:
                row.update(curve(trainer.policy.lm))
            if callback is not None:
                callback(step, row)

        log = train_ppo(trainer, prompts, cfg.steps, cfg.batch_size, seed=preset.seed, progress=progress,
                        callback=on_step, desc=f"ppo on the verifier {preset.name}", resume_dir=resume_dir(path),
                        save_every=g.eval_every)
        model = trainer.policy.lm.eval()
        rows = [first, *log.rows]
        info = {"preset": preset.name, "seed": preset.seed, "steps": cfg.steps, "sft": sft.path.name,
                "answers_sampled": cfg.steps * cfg.batch_size,
                "train_seconds": round(time.perf_counter() - started + log.resumed_seconds, 2), "device": str(device)}
        save_checkpoint(path, model, sft.tokenizer, {**info, "ppo_log": json_rows(rows)}, TrainLog())
        return StageModel(model, sft.tokenizer, sft.world, preset, PPOLog([r["step"] for r in rows], rows), info, path)

    return train_or_load(path, load, train, force)


# ---------------------------------------------------------------------------------------
# What's next: tool use (notebook 6)
# ---------------------------------------------------------------------------------------
def train_or_load_tools(preset: Preset, sft: StageModel | None = None, force: bool = False,
                        progress: bool = True, callback=None, device=None) -> StageModel:
    """The SFT model fine-tuned to call tools (`embiggen.methods.tools`): demonstrations whose answers
    call the calculator and the counter, mixed with the SFT mixture's other examples; the
    tools' results are masked out of the loss."""
    check_preset(preset)
    device = device or pick_device()
    splits, cfg = data_splits(preset), preset.tools
    sft_model = sft or train_or_load_sft(preset, progress=progress, device=device)
    train_examples, val_examples = splits.tools_train(), splits.tools_val()
    data = config_key([(e.instruction, e.answer) for e in train_examples + val_examples])  # the demonstrations' hash
    path = cache_dir("tools", preset, TOOLS_VERSION, splits.fingerprint, sft_model.path.name, asdict(cfg), data)

    demonstrations = sum("[" in e.answer for e in train_examples)
    return fine_tuned(preset, sft_model, path, lambda: (train_examples, val_examples), cfg.train,
                      f"tools {preset.name}", {"n_demonstrations": demonstrations, "sft": sft_model.path.name},
                      encode=encode_tool_example, force=force, progress=progress, callback=callback, device=device)
