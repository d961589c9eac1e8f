"""Presets are data: one `Preset` per machine size, nothing else in the code branches on names.

* ``smoke``  — for CI and tests: a tiny world and model, seconds per stage.
* ``laptop`` — the default on a CPU: the whole chain in minutes on 2 cores.
* ``gpu``    — a larger world and model for a laptop GPU.

Pick one with an argument or the ``EMBIGGEN_PRESET`` environment variable.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the Llama-style decoder trained from scratch."""
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 352
    max_position_embeddings: int = 256


@dataclass(frozen=True)
class PretrainConfig:
    """The plain pretraining loop: AdamW, linear warmup then cosine decay, clipping."""
    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8


@dataclass(frozen=True)
class SFTConfig:
    """Instruction tuning: the mixture's size and splits, and the fine-tuning loop."""
    steps: int = 450
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_length: int = 160
    packing: bool = True
    replay_share: float = 0.125    # share of each batch that is pretraining text (keeps knowledge)
    replay_documents: int = 10000  # how many corpus documents to replay from
    eval_every: int = 150
    n_train: int = 20000
    n_val: int = 400
    heldout_cluster: str = "fact_check"
    alignment_share: float = 0.10
    hedge_share: float = 0.15
    n_eval_per_cluster: int = 60
    ablation_cluster_counts: tuple[int, ...] = (1, 3, 5)
    ablation_steps: int = 200


@dataclass(frozen=True)
class RewardConfig:
    """Preference collection (InstructGPT: K samples per prompt, ranked) and reward-model training."""
    n_prompts: int = 3000          # prompts whose K samples the labeler ranks
    n_eval_prompts: int = 300      # held-out prompts, for held-out pairs
    k: int = 4                     # samples per prompt (InstructGPT used 4 to 9)
    task_share: float = 0.5        # share of ordinary task prompts; the rest are alignment prompts
    temperature: float = 1.0
    max_new_tokens: int = 32
    label_noise: float = 0.1       # share of the labeler's preferences flipped at random
    steps: int = 80                # about one epoch: reward models overfit fast (InstructGPT trains one)
    batch_size: int = 32           # pairs per step
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 20


@dataclass(frozen=True)
class PPOConfig:
    """PPO with a KL penalty (Ziegler et al. 2019; Ouyang et al. 2022). Every knob of ppo.py."""
    steps: int = 60                # PPO iterations: one rollout, then ppo_epochs of updates
    batch_size: int = 64           # episodes (prompt + sampled response) per rollout
    minibatch_size: int = 32
    ppo_epochs: int = 4
    lr: float = 3e-5
    grad_clip: float = 1.0
    max_new_tokens: int = 32
    temperature: float = 1.0
    kl_coef: float = 0.1           # beta in  r_t = -beta * KL_t  (+ the score at the last token)
    kl_estimator: str = "k1"       # "k1": log p - log p_ref;  "k3": (r - 1) - log r, r = p_ref / p
    adaptive_kl: bool = False      # Ziegler et al.'s proportional controller towards kl_target
    kl_target: float = 6.0
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    ptx_coef: float = 1.0          # PPO-ptx: weight of the language-model loss on SFT task demonstrations
    ptx_batch_size: int = 8        # packed rows of demonstrations per minibatch
    missing_eos_penalty: float = 1.0  # taken off the score of a response that never ends
    task_share: float = 0.5
    n_prompts: int = 2000
    n_eval_prompts: int = 300
    rounds: int = 2                # iterated RLHF: between rounds, new comparisons of the policy's own samples
    refresh_prompts: int = 1000    # ... on this many fresh prompts, and the reward model is retrained on all pairs
    kl_max: float = 100.0          # stop with an error above this sequence KL (divergence)
    log_every: int = 10
    best_of_n: tuple[int, ...] = (1, 2, 4, 8, 16)
    kl_sweep: tuple[float, ...] = (0.0, 0.03, 0.1, 0.3)  # notebook 3's reward-hacking sweep
    sweep_steps: int = 60
    sweep_lr: float = 1e-4         # the sweep pushes harder, so that over-optimisation shows within minutes


@dataclass(frozen=True)
class Preset:
    name: str
    seed: int = 1234
    # the world
    n_people: int = 40
    n_unknown: int = 10
    max_operand: int = 30
    train_documents: int = 30000
    val_documents: int = 1000
    # tokenizer and model
    vocab_size: int = 1024
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    # "size matters": smaller models trained with the same recipe, for notebook 01
    size_sweep: tuple[ModelConfig, ...] = ()
    # evaluation
    n_instruction_probes: int = 200

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", n_people=12, n_unknown=6, max_operand=10, train_documents=3000,
        val_documents=200, vocab_size=512,
        model=ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=160, max_position_embeddings=256),
        pretrain=PretrainConfig(steps=200, batch_size=16, seq_len=64, lr=3e-3, warmup_steps=20,
                                eval_every=50, eval_batches=2),
        sft=SFTConfig(steps=60, batch_size=16, max_length=128, eval_every=30, n_train=2000, n_val=64,
                      n_eval_per_cluster=10, ablation_cluster_counts=(1, 3), ablation_steps=30),
        reward=RewardConfig(n_prompts=120, n_eval_prompts=40, steps=40, batch_size=16, eval_every=20),
        ppo=PPOConfig(steps=8, batch_size=16, minibatch_size=8, ppo_epochs=2, max_new_tokens=24, n_prompts=200,
                      refresh_prompts=60,
                      n_eval_prompts=40, log_every=2, best_of_n=(1, 2, 4), kl_sweep=(0.0, 0.05), sweep_steps=6),
        size_sweep=(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128),
                    ModelConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=128, max_position_embeddings=128)),
        n_instruction_probes=40,
    ),
    "laptop": Preset(
        name="laptop", n_people=40, n_unknown=10, max_operand=12, train_documents=40000,
        val_documents=1000, vocab_size=1024,
        model=ModelConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                          intermediate_size=352, max_position_embeddings=256),
        pretrain=PretrainConfig(steps=800, batch_size=32, seq_len=128, lr=3e-3, warmup_steps=50,
                                eval_every=100, eval_batches=8),
        size_sweep=(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=96, max_position_embeddings=256),
                    ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=176, max_position_embeddings=256)),
        n_instruction_probes=400,
    ),
    "gpu": Preset(
        name="gpu", n_people=40, n_unknown=10, max_operand=50, train_documents=120000,
        val_documents=2000, vocab_size=2048,
        model=ModelConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                          intermediate_size=1024, max_position_embeddings=256),
        pretrain=PretrainConfig(steps=3000, batch_size=64, seq_len=256, lr=1e-3, warmup_steps=200,
                                eval_every=250, eval_batches=16),
        sft=SFTConfig(steps=2000, batch_size=64, lr=5e-4, max_length=256, eval_every=200, n_train=60000,
                      n_val=1000, n_eval_per_cluster=100, ablation_steps=800),
        reward=RewardConfig(n_prompts=4000, n_eval_prompts=500, steps=60, batch_size=64, lr=1e-4),
        ppo=PPOConfig(steps=300, batch_size=128, minibatch_size=64, lr=1e-4, n_prompts=6000, n_eval_prompts=500,
                      sweep_steps=300),
        size_sweep=(ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=176, max_position_embeddings=256),
                    ModelConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=512, max_position_embeddings=256)),
        n_instruction_probes=400,
    ),
}

DEFAULT_PRESET = "laptop"


def get_preset(name: str | Preset | None = None) -> Preset:
    """The preset called `name`, else ``$EMBIGGEN_PRESET``, else ``laptop``."""
    if isinstance(name, Preset):
        return name
    name = name or os.environ.get("EMBIGGEN_PRESET") or DEFAULT_PRESET
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def with_overrides(preset: Preset, **changes) -> Preset:
    """A copy of `preset` with some fields changed (e.g. a different seed)."""
    return replace(preset, **changes)
