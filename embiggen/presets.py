"""Presets are data: one `Preset` per machine size, nothing else in the code branches on names.

* ``smoke``  — for CI and tests: a tiny world and model, seconds per stage.
* ``laptop`` — the default on a CPU: the whole chain in minutes on 2 cores. It is the
  dataclasses' defaults, so the defaults below *are* the laptop preset.
* ``gpu``    — a larger world and model for a laptop GPU.

Pick one with an argument or the ``EMBIGGEN_PRESET`` environment variable.

Three kinds of configuration, kept apart because they play different parts in the cache:

* **training configs** (`PretrainConfig`, `SFTConfig`, `RewardConfig`, `PPOConfig`, with one
  `OptimConfig` each) decide a stage's weights; a stage's cache key hashes its training config;
* **`EvalConfig`** decides what the report card and the notebooks measure on;
* **`ExperimentConfig`** holds the notebooks' extra experiments (sweeps, ablations): each trains
  its *own* extra models, and none of it is in the key of the main chain's stages.

Every field carries a help string (`dataclasses.fields(cfg)[i].metadata["help"]`), TRL's habit.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace

from embiggen.errors import UserError


def knob(default, help: str):
    """A config field with its help string."""
    return field(default=default, metadata={"help": help})


def describe(cfg) -> list[tuple[str, object, str]]:
    """(name, value, help) for every field of a config — for printing a preset in a notebook."""
    return [(f.name, getattr(cfg, f.name), f.metadata.get("help", "")) for f in fields(cfg)]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the Llama-style decoder trained from scratch."""
    hidden_size: int = knob(128, "width of the residual stream")
    num_hidden_layers: int = knob(4, "transformer blocks")
    num_attention_heads: int = knob(4, "attention heads per block (as many key-value heads)")
    intermediate_size: int = knob(352, "width of the SwiGLU MLP")
    max_position_embeddings: int = knob(256, "longest sequence the model reads (its context)")


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters instead of training every weight (Hu et al. 2021; `embiggen.lm.lora`)."""
    rank: int = knob(0, "r, the adapters' rank (0: off, every weight trains)")
    alpha: float = knob(16.0, "alpha: each adapted matrix becomes W0 + (alpha / r) B A")
    target_modules: tuple[str, ...] = knob((), "the linear layers to adapt, by name, e.g. ('q_proj', 'v_proj') "
                                               "(empty: every linear layer but the output)")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and cosine decay, and gradient clipping: every stage's optimiser."""
    lr: float = knob(3e-3, "peak learning rate")
    min_lr_ratio: float = knob(0.1, "the cosine decay ends at lr * min_lr_ratio (1.0: a constant rate)")
    warmup_steps: int = knob(50, "linear warmup from 0 to lr over this many steps (0: none)")
    weight_decay: float = knob(0.1, "AdamW's decoupled weight decay")
    betas: tuple[float, float] = knob((0.9, 0.95), "AdamW's decay rates of the gradient's moments")
    eps: float = knob(1e-8, "AdamW's epsilon")
    grad_clip: float = knob(1.0, "clip the gradient's global norm to this")
    accumulation_steps: int = knob(1, "batches whose gradients add up to one optimiser step: a batch this many times "
                                      "larger, in pieces that fit in memory (not in PPO, whose minibatch_size is that)")
    bf16: bool = knob(False, "bfloat16 autocast on a CUDA GPU (ignored elsewhere); the weights stay float32")
    gradient_checkpointing: bool = knob(False, "recompute activations in the backward pass (activation "
                                               "checkpointing): less memory, more time")
    lora: LoRAConfig = knob(LoRAConfig(), "train low-rank adapters only (fine-tuning stages; rank 0: off)")


@dataclass(frozen=True)
class PretrainConfig:
    """The plain pretraining loop on random windows of the corpus."""
    steps: int = knob(800, "optimiser steps")
    batch_size: int = knob(32, "windows per step")
    seq_len: int = knob(128, "tokens per window")
    optim: OptimConfig = knob(OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.1), "the optimiser")
    eval_every: int = knob(100, "steps between validation losses (and resume points)")
    eval_batches: int = knob(8, "batches of held-out text per validation loss")


@dataclass(frozen=True)
class SFTConfig:
    """Instruction tuning: the mixture (its size, held-out cluster and alignment material) and the loop."""
    steps: int = knob(450, "optimiser steps")
    batch_size: int = knob(32, "rows per step (packed examples plus replayed text)")
    optim: OptimConfig = knob(OptimConfig(lr=2e-3, warmup_steps=30, weight_decay=0.0), "the optimiser")
    max_length: int = knob(160, "tokens per row")
    packing: bool = knob(True, "pack several examples into one row (attention stays within each)")
    logprob_chunk: int = knob(0, "> 0: token losses from the last hidden states, this many positions at a time "
                                 "(memory for a large vocabulary; 0: all logits at once)")
    replay_share: float = knob(0.125, "share of each batch that is pretraining text (keeps knowledge)")
    replay_documents: int = knob(10000, "how many corpus documents to replay from")
    eval_every: int = knob(150, "steps between validation losses (and resume points)")
    n_train: int = knob(20000, "training examples in the mixture")
    n_val: int = knob(400, "validation examples (training material; for the loss curve)")
    heldout_cluster: str = knob("fact_check", "the task cluster no stage trains on (FLAN's held-out cluster)")
    alignment_share: float = knob(0.10, "share of examples about unknown people, medicine and harm")
    hedge_share: float = knob(0.15, "share of *those* answered honestly or harmlessly")


@dataclass(frozen=True)
class RewardConfig:
    """Preference collection (InstructGPT: K samples per prompt, ranked) and reward-model training."""
    n_prompts: int = knob(3000, "prompts whose K samples the labeler ranks")
    k: int = knob(4, "samples per prompt (InstructGPT used 4 to 9)")
    task_share: float = knob(0.5, "share of ordinary task prompts; the rest are alignment prompts")
    temperature: float = knob(1.0, "sampling temperature of the collected answers")
    max_new_tokens: int = knob(32, "longest collected answer")
    label_noise: float = knob(0.1, "share of the labeler's preferences flipped at random")
    written_answers: bool = knob(True, "the labeler ranks its own 'I do not know anyone called <them>.' with the "
                                       "samples of a question about someone who does not exist")
    written_refusals: bool = knob(True, "the labeler ranks a decline of its own ('I cannot help with that.', ...) "
                                        "with the samples of every ordinary task, so refusing is seen to lose")
    written_misreadings: bool = knob(False, "... and a harmful request's answer ('Sure. Wait until night, ...'), "
                                            "a wrong answer to the task, which a decline must not beat")
    n_norm_prompts: int = knob(300, "training prompts whose SFT samples set the reward scale (mean 0, std 1)")
    steps: int = knob(440, "about one epoch of the pairs: reward models overfit fast (InstructGPT trains one)")
    batch_size: int = knob(32, "pairs per step (on average, with batching 'prompt')")
    batching: str = knob("prompt", "'prompt': all the pairs of a prompt's ranking in one batch element (InstructGPT); "
                                   "'pair': pairs drawn independently")
    optim: OptimConfig = knob(OptimConfig(lr=1e-4, warmup_steps=20, weight_decay=0.0), "the optimiser")
    eval_every: int = knob(20, "steps between held-out losses and accuracies (and resume points)")


@dataclass(frozen=True)
class PPOConfig:
    """PPO with a KL penalty (Ziegler et al. 2019; Ouyang et al. 2022). Every knob of ppo.py."""
    steps: int = knob(60, "PPO iterations: one rollout, then ppo_epochs of updates")
    batch_size: int = knob(64, "episodes (prompt + sampled response) per rollout")
    minibatch_size: int = knob(32, "episodes per gradient step")
    ppo_epochs: int = knob(4, "passes over each rollout")
    optim: OptimConfig = knob(OptimConfig(lr=3e-5, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
                                          betas=(0.9, 0.999), eps=1e-5), "the optimiser (Adam, constant rate)")
    max_new_tokens: int = knob(32, "longest sampled response")
    temperature: float = knob(1.0, "sampling temperature (log-probabilities use the same)")
    logprob_chunk: int = knob(0, "> 0: log-probs and entropies from the last hidden states, this many positions at "
                                 "a time (memory for a large vocabulary; 0: all logits at once)")
    kl_coef: float = knob(0.1, "beta in  r_t = -beta * KL_t  (+ the score at the last token)")
    kl_estimator: str = knob("k1", "'k1': log p - log p_ref;  'k3': (r - 1) - log r, r = p_ref / p (as a reward its "
                                   "policy gradient is biased, Tang & Munos 2025; logged as kl_k3 either way)")
    adaptive_kl: bool = knob(False, "Ziegler et al.'s proportional controller towards kl_target")
    kl_target: float = knob(6.0, "the adaptive controller's target KL (nats per response)")
    kl_horizon: int = knob(10000, "the adaptive controller's horizon (episodes)")
    gamma: float = knob(1.0, "discount")
    lam: float = knob(0.95, "GAE's lambda")
    cliprange: float = knob(0.2, "epsilon of the clipped policy ratio")
    cliprange_value: float = knob(0.2, "epsilon of the clipped value update")
    vf_coef: float = knob(0.1, "weight of the value loss")
    value_model: str = knob("head", "'head': a value head on the policy's trunk, starting at 0; 'reward_model': a "
                                    "separate critic initialised from the reward model (Huang et al. 2024)")
    whiten_rewards: bool = knob(False, "whiten the per-token rewards of each rollout (keeping their mean)")
    ptx_coef: float = knob(1.0, "PPO-ptx: weight of the language-model loss on SFT task demonstrations")
    ptx_batch_size: int = knob(8, "packed rows of demonstrations per minibatch")
    missing_eos_penalty: float = knob(1.0, "taken off the score of a response that never ends")
    task_share: float = knob(0.5, "share of ordinary task prompts; the rest are alignment prompts")
    n_prompts: int = knob(2000, "prompts PPO samples its episodes from")
    rounds: int = knob(2, "iterated RLHF: between rounds, new comparisons of the policy's own samples")
    refresh_prompts: int = knob(1000, "... on this many fresh prompts; the reward model is retrained on all pairs")
    kl_max: float = knob(100.0, "stop with an error above this sequence KL (divergence)")
    save_every: int = knob(10, "steps between resume points")


@dataclass(frozen=True)
class DPOConfig:
    """Direct preference optimisation (Rafailov et al. 2023) on the reward model's preference pairs."""
    beta: float = knob(0.5, "beta: the strength of the implicit KL constraint to the SFT model")
    loss_type: str = knob("sigmoid", "'sigmoid': DPO's Bradley-Terry loss; 'ipo': IPO's squared loss on the per-token "
                                     "margin (Azar et al. 2023)")
    length_normalize: bool = knob(False, "length-normalised DPO: compare mean log-probabilities per token instead of sums")
    ptx_coef: float = knob(0.0, "as PPO-ptx: weight of the language-model loss on SFT task demonstrations")
    ptx_batch_size: int = knob(8, "packed rows of demonstrations per step")
    steps: int = knob(200, "optimiser steps (about 0.7 passes over the laptop preset's pairs)")
    batch_size: int = knob(16, "preference pairs per step")
    optim: OptimConfig = knob(OptimConfig(lr=2e-5, warmup_steps=20, weight_decay=0.0), "the optimiser")
    max_length: int = knob(160, "tokens per prompt + answer (and per packed row)")
    packing: bool = knob(True, "pack the sequences of a batch into rows (attention stays within each)")
    share_prompt: bool = knob(True, "... and write each pair's prompt once, both answers after it (with packing)")
    logprob_chunk: int = knob(0, "> 0: log-probs from the last hidden states, this many positions at a time "
                                 "(memory for a large vocabulary; 0: all logits at once)")
    eval_every: int = knob(100, "steps between held-out losses and accuracies (and resume points)")
    rounds: int = knob(1, "iterated (online) DPO: after each round, new pairs of the policy's own samples, "
                          "ranked by the labeler; `steps` is shared among the rounds")
    round_prompts: int = knob(1000, "... on this many fresh prompts per new round (K answers each, as the "
                                    "reward model's collection)")


@dataclass(frozen=True)
class PreferenceLossConfig:
    """The training knobs DPO's relatives share with it (SimPO, ORPO, KTO): the same pairs (or, for
    KTO, the same answers judged one at a time), batches, optimiser and packing."""
    steps: int = knob(200, "optimiser steps (DPO's)")
    batch_size: int = knob(16, "preference pairs (KTO: judged answers) per step")
    optim: OptimConfig = knob(OptimConfig(lr=2e-5, warmup_steps=20, weight_decay=0.0), "the optimiser (DPO's)")
    max_length: int = knob(160, "tokens per prompt + answer (and per packed row)")
    packing: bool = knob(True, "pack the sequences of a batch into rows (attention stays within each)")
    share_prompt: bool = knob(True, "... and write each pair's prompt once, both answers after it (with packing)")
    logprob_chunk: int = knob(0, "> 0: log-probs from the last hidden states, this many positions at a time")
    eval_every: int = knob(100, "steps between held-out losses and accuracies (and resume points)")


@dataclass(frozen=True)
class SimPOConfig(PreferenceLossConfig):
    """SimPO (Meng et al. 2024): reference-free, the length-normalised log-likelihood as the reward, a target margin."""
    beta: float = knob(2.0, "beta: the scale of the average log-likelihood that is SimPO's reward")
    gamma: float = knob(1.0, "gamma: the target reward margin (the paper's gamma / beta of 0.5 at beta 2)")


@dataclass(frozen=True)
class ORPOConfig(PreferenceLossConfig):
    """ORPO (Hong et al. 2024): SFT's loss on the chosen answers plus an odds-ratio term, no reference."""
    lam: float = knob(0.1, "lambda: the weight of the odds-ratio term beside the SFT loss (the paper's 0.1)")


@dataclass(frozen=True)
class KTOConfig(PreferenceLossConfig):
    """KTO (Ethayarajh et al. 2024): single answers with a thumbs up or down, against the reference."""
    beta: float = knob(0.1, "beta: the scale of the implicit reward log pi / pi_ref (the paper's 0.1)")
    desirable_weight: float = knob(1.0, "lambda_D: the weight of a thumbs-up answer's loss")
    undesirable_weight: float = knob(1.0, "lambda_U: the weight of a thumbs-down answer's loss")
    balance: bool = knob(True, "scale lambda_D by n_undesirable / n_desirable, so that lambda_D n_D = lambda_U n_U "
                               "(the paper's advice when one kind of judgement is rarer)")


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO (Shao et al. 2024) on verifiable rewards: a group of answers per prompt, no critic.
    Every knob of grpo.py."""
    clusters: tuple[str, ...] = knob(("counting", "arithmetic", "list_ops"),
                                     "task clusters trained on (held-in templates only); every cluster is evaluated")
    steps: int = knob(200, "iterations: a group of answers to each of prompts_per_step prompts, then the update")
    prompts_per_step: int = knob(16, "prompts per iteration")
    group_size: int = knob(8, "G: answers sampled per prompt (the group is its own baseline)")
    epochs: int = knob(1, "mu: passes over each batch of answers (> 1 reuses them off-policy, clipped)")
    minibatch_size: int = knob(128, "answers per gradient step (>= prompts_per_step * group_size with epochs = 1: "
                                    "one on-policy step per batch)")
    optim: OptimConfig = knob(OptimConfig(lr=1e-4, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
                                          betas=(0.9, 0.99)), "the optimiser (Adam, constant rate)")
    max_new_tokens: int = knob(32, "longest sampled answer (Dr. GRPO's constant L_max)")
    temperature: float = knob(1.0, "sampling temperature (log-probabilities use the same)")
    logprob_chunk: int = knob(0, "> 0: log-probs from the last hidden states, this many positions at a time")
    cliprange: float = knob(0.2, "epsilon of the clipped ratio (its lower side)")
    cliprange_high: float = knob(0.0, "DAPO's clip-higher: the upper epsilon (0: the same as cliprange)")
    loss_type: str = knob("grpo", "'grpo': per answer, then over answers; 'dapo': over all tokens; "
                                  "'dr_grpo': over a constant (answers * max_new_tokens)")
    scale_rewards: bool = knob(True, "divide each advantage by its group's standard deviation (Dr. GRPO: False)")
    baseline: str = knob("mean", "'mean': the group's mean reward; 'leave_one_out': the other answers' (RLOO)")
    kl_coef: float = knob(0.04, "beta of DeepSeekMath's k3 term to the reference (the SFT model) in the loss: it "
                                "keeps what GRPO does not train on near SFT (DeepSeekMath's 0.04; 0: none, as TRL)")
    verifier: str = knob("exact", "'exact': the evaluation's exact-match scorer; 'loose': any answer that contains "
                                  "the reference passes (the reward-hacking lesson)")
    n_prompts: int = knob(2000, "training prompts (held-in templates of the trained clusters)")
    eval_every: int = knob(10, "steps between held-out accuracies on the live curve (and resume points)")
    n_curve_prompts: int = knob(20, "held-out-template prompts per trained cluster on the live curve (greedy)")


@dataclass(frozen=True)
class ToolConfig:
    """Tool use (Toolformer, Schick et al. 2023): the SFT model fine-tuned on demonstrations
    whose answers call a calculator and a counter (`embiggen.methods.tools`)."""
    train: SFTConfig = knob(SFTConfig(steps=200, batch_size=32, optim=OptimConfig(lr=2e-3, warmup_steps=10,
                                                                                  weight_decay=0.0),
                                      replay_share=0.0, eval_every=100, n_train=6000, n_val=200),
                            "the fine-tune: SFT's loss and loop (the tools' results are not targets)")
    tool_share: float = knob(0.5, "share of demonstrations that call a tool (arithmetic, counting); "
                                  "the rest are the SFT mixture's other examples, as before")
    max_operand: int = knob(999, "largest operand in the calculator's demonstrations and its evaluation "
                                 "(the world's own arithmetic stops at Preset.max_operand)")
    max_calls: int = knob(2, "calls per answer at most")
    max_new_tokens: int = knob(64, "longest answer (the model's own tokens; results not counted)")
    n_eval: int = knob(200, "held-out prompts per evaluation set (counting; arithmetic beyond the world's range)")


@dataclass(frozen=True)
class EvalConfig:
    """What the report card and the notebooks measure on. The held-out sets are drawn before any
    training set, and training sets skip their prompts, so their sizes shape the training data too
    (`embiggen.data.splits`); the cache keys therefore carry a fingerprint of those prompts."""
    n_instruction_probes: int = knob(400, "instructions put to the base model as plain text")
    n_per_cluster: int = knob(60, "prompts per cluster in each of notebook 2's evaluation splits")
    n_rm_prompts: int = knob(300, "held-out prompts whose ranked SFT samples test the reward model")
    n_ppo_prompts: int = knob(300, "held-out prompts on which SFT, PPO and best-of-n are judged")
    n_paraphrased: int = knob(50, "held-out paraphrases of ordinary questions per group (known and pretraining-only "
                                  "people, arithmetic, lists): over-refusal in words no template uses")
    max_new_tokens: int = knob(32, "longest greedy answer when judging a chat model")
    n_pass_samples: int = knob(32, "sampled answers per prompt (T = 1) behind pass@k and majority votes")
    pass_k: tuple[int, ...] = knob((1, 4, 16), "the k of pass@k in the report")


@dataclass(frozen=True)
class ExperimentConfig:
    """The notebooks' experiments. Each trains its own extra models (cached under their own keys)."""
    size_sweep: tuple[ModelConfig, ...] = knob(
        (ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96),
         ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=176)),
        "notebook 1's 'size matters': smaller shapes trained with the same recipe")
    copy_models: tuple[ModelConfig, ...] = knob(
        (ModelConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),),
        "notebook 1's copying probe: bigger shapes, trained with the preset's recipe")
    copy_steps: tuple[int, ...] = knob((1600,), "... and the preset's shape pretrained for this many steps")
    ablation_cluster_counts: tuple[int, ...] = knob((1, 3, 5), "notebook 2's FLAN ablation: clusters trained on")
    ablation_steps: int = knob(200, "SFT steps of each ablation model")
    best_of_n: tuple[int, ...] = knob((1, 2, 4, 8, 16), "notebook 3's best-of-n baseline: values of n")
    kl_sweep: tuple[float, ...] = knob((0.0, 0.03, 0.1, 0.3), "notebook 3's reward-hacking sweep: KL coefficients")
    sweep_steps: int = knob(60, "PPO steps of each sweep run (one round, the first reward model)")
    sweep_lr: float = knob(1e-4, "the sweep pushes harder, so that over-optimisation shows within minutes")
    ensemble_members: int = knob(3, "notebook 3's reward-model ensemble: members (the stage's reward model and others "
                                    "on the same pairs from other seeds)")
    ensemble_modes: tuple[str, ...] = knob(("worst", "uwo"), "... the conservative rewards PPO is run against, one "
                                                             "run each at the KL sweep's lowest coefficient")
    ensemble_lam: float = knob(1.0, "... lambda of the uncertainty-weighted reward (mean - lambda * variance)")
    dpo_betas: tuple[float, ...] = knob((0.05, 0.1, 0.5, 2.0), "notebook 4's DPO runs, one per beta")
    simpo_betas: tuple[float, ...] = knob((1.0, 2.0, 4.0), "notebook 4's SimPO runs, one per beta (gamma / beta kept)")
    orpo_lambdas: tuple[float, ...] = knob((0.1, 0.5, 2.0), "notebook 4's ORPO runs, one per lambda")
    kto_betas: tuple[float, ...] = knob((0.05, 0.1, 0.5), "notebook 4's KTO runs, one per beta")
    speed_tokens: int = knob(128, "notebook 6's speed measurements: new tokens per answer (SmolLM2's: half as many)")
    grpo_loss_types: tuple[str, ...] = knob(("grpo", "dapo", "dr_grpo"), "notebook 5's loss-averaging variants, "
                                            "each trained like the stage (Dr. GRPO without the std scaling)")
    loose_verifier_clusters: tuple[str, ...] = knob(("counting", "list_ops"), "notebook 5's loose-verifier run "
                                                    "(an answer passes if it contains the reference): its clusters")
    ei_rounds: int = knob(4, "notebook 5's expert iteration: rounds, sharing GRPO's prompts and sampled answers")
    ei_sft: SFTConfig = knob(SFTConfig(steps=60, batch_size=32, optim=OptimConfig(lr=5e-4, warmup_steps=5,
                                                                                 weight_decay=0.0),
                                       replay_share=0.0, eval_every=60, n_train=0, n_val=0),
                             "... each round's fine-tune on the verified answers (SFT's loss and loop)")
    majority_ks: tuple[int, ...] = knob((1, 2, 4, 8, 16, 32), "notebook 5's majority votes: samples per prompt")


@dataclass(frozen=True)
class Preset:
    """A whole configuration: the world, the model, every stage, evaluation and experiments."""
    name: str = knob("laptop", "used in cache folder names and the report card")
    seed: int = knob(1234, "every random choice of every stage starts from this")
    n_people: int = knob(40, "people in the world")
    n_unknown: int = knob(10, "world-style names of people who do not exist")
    max_operand: int = knob(12, "largest number in the arithmetic tasks")
    train_documents: int = knob(40000, "pretraining documents")
    val_documents: int = knob(1000, "held-out pretraining documents")
    vocab_size: int = knob(1024, "BPE vocabulary, special tokens included")
    base_model: str = knob("", "a Hugging Face causal LM (a local folder, or a hub name already in the local cache) to "
                               "start the chain from instead of pretraining the embedded model ('' pretrains; "
                               "$EMBIGGEN_BASE or `embiggen run --base` set it)")
    model: ModelConfig = knob(ModelConfig(), "the model trained from scratch")
    pretrain: PretrainConfig = knob(PretrainConfig(), "step 1: pretraining")
    sft: SFTConfig = knob(SFTConfig(), "step 2: instruction tuning")
    reward: RewardConfig = knob(RewardConfig(), "step 3a: preferences and the reward model")
    ppo: PPOConfig = knob(PPOConfig(), "step 3b: PPO")
    dpo: DPOConfig = knob(DPOConfig(), "step 3, without a reward model: DPO")
    simpo: SimPOConfig = knob(SimPOConfig(), "DPO's relative without a reference: SimPO")
    orpo: ORPOConfig = knob(ORPOConfig(), "DPO's relative inside SFT: ORPO")
    kto: KTOConfig = knob(KTOConfig(), "DPO's relative on thumbs up / down: KTO")
    grpo: GRPOConfig = knob(GRPOConfig(), "step 4: RL with verifiable rewards (GRPO)")
    tools: ToolConfig = knob(ToolConfig(), "what's next: tool use")
    evaluation: EvalConfig = knob(EvalConfig(), "held-out evaluation")
    experiments: ExperimentConfig = knob(ExperimentConfig(), "the notebooks' extra experiments")

    def to_dict(self) -> dict:
        return asdict(self)


#: The pretrained presets' default base model, a hub name: found only if it is in the local Hugging
#: Face cache (nothing is downloaded); `embiggen run --base PATH` points at a local folder instead.
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", n_people=12, n_unknown=6, max_operand=10, train_documents=3000,
        val_documents=200, vocab_size=512,
        model=ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=160),
        pretrain=PretrainConfig(steps=200, batch_size=16, seq_len=64, optim=OptimConfig(lr=3e-3, warmup_steps=20),
                                eval_every=50, eval_batches=2),
        sft=SFTConfig(steps=60, batch_size=16, max_length=128, eval_every=30, n_train=2000, n_val=64),
        reward=RewardConfig(n_prompts=120, n_norm_prompts=40, steps=40, batch_size=16, eval_every=20),
        ppo=PPOConfig(steps=8, batch_size=16, minibatch_size=8, ppo_epochs=2, max_new_tokens=24, n_prompts=200,
                      refresh_prompts=60, save_every=2),
        dpo=DPOConfig(steps=20, batch_size=8, eval_every=10, round_prompts=60),
        grpo=GRPOConfig(steps=6, prompts_per_step=4, group_size=4, minibatch_size=16, max_new_tokens=24, n_prompts=64,
                        eval_every=3, n_curve_prompts=4),
        tools=ToolConfig(train=SFTConfig(steps=30, batch_size=16, max_length=128, eval_every=15, n_train=600, n_val=32,
                                         replay_share=0.0, optim=OptimConfig(lr=3e-3, warmup_steps=5,
                                                                             weight_decay=0.0)),
                         n_eval=24),
        evaluation=EvalConfig(n_instruction_probes=40, n_per_cluster=10, n_rm_prompts=40, n_ppo_prompts=40,
                              n_paraphrased=6, max_new_tokens=24, n_pass_samples=8, pass_k=(1, 4, 8)),
        experiments=ExperimentConfig(
            size_sweep=(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    max_position_embeddings=128),
                        ModelConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                    max_position_embeddings=128)),
            copy_models=(ModelConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=2, intermediate_size=224),),
            copy_steps=(400,),
            ablation_cluster_counts=(1, 3), ablation_steps=30, best_of_n=(1, 2, 4), kl_sweep=(0.0, 0.05),
            sweep_steps=6, dpo_betas=(0.1, 0.5), ensemble_members=2, ensemble_modes=("worst",), simpo_betas=(2.0,), orpo_lambdas=(0.1,), kto_betas=(0.1,),
            speed_tokens=24, ei_rounds=2,
            ei_sft=SFTConfig(steps=4, batch_size=8, max_length=128, replay_share=0.0, eval_every=4, n_train=0,
                             n_val=0, optim=OptimConfig(lr=5e-4, warmup_steps=1, weight_decay=0.0)),
            majority_ks=(1, 2, 4, 8)),
    ),
    "laptop": Preset(name="laptop"),
    "gpu": Preset(
        name="gpu", n_people=40, n_unknown=10, max_operand=50, train_documents=120000,
        val_documents=2000, vocab_size=2048,
        model=ModelConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1024),
        pretrain=PretrainConfig(steps=3000, batch_size=64, seq_len=256, optim=OptimConfig(lr=1e-3, warmup_steps=200),
                                eval_every=250, eval_batches=16),
        sft=SFTConfig(steps=2000, batch_size=64, optim=OptimConfig(lr=5e-4, warmup_steps=30, weight_decay=0.0),
                      max_length=256, eval_every=200, n_train=60000, n_val=1000),
        reward=RewardConfig(n_prompts=4000, n_norm_prompts=500, steps=60, batch_size=64),
        ppo=PPOConfig(steps=300, batch_size=128, minibatch_size=64, n_prompts=6000,
                      optim=OptimConfig(lr=1e-4, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
                                        betas=(0.9, 0.999), eps=1e-5)),
        evaluation=EvalConfig(n_per_cluster=100, n_rm_prompts=500, n_ppo_prompts=500),
        experiments=ExperimentConfig(
            size_sweep=(ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=176),
                        ModelConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=4,
                                    intermediate_size=512)),
            copy_models=(ModelConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                     intermediate_size=1376),),
            copy_steps=(6000,), ablation_steps=800, sweep_steps=300),
    ),
    # A pretrained causal LM of 100M-500M parameters (default: SmolLM2-135M-Instruct) instead of the
    # embedded model: learning rates a hundred times smaller than those that train a 1M model from scratch
    # (the embedded SFT rate, 2e-3, takes SmolLM2's training loss from 2.19 to 14.7 in one step).
    "pretrained": Preset(
        name="pretrained", base_model=SMOLLM2,
        sft=SFTConfig(steps=300, batch_size=8, max_length=256, eval_every=100, n_train=8000, n_val=200,
                      logprob_chunk=256,
                      optim=OptimConfig(lr=5e-5, warmup_steps=20, weight_decay=0.0, accumulation_steps=2, bf16=True)),
        reward=RewardConfig(n_prompts=1500, n_norm_prompts=200, steps=100, batch_size=8, eval_every=25,
                            optim=OptimConfig(lr=1e-5, warmup_steps=10, weight_decay=0.0, accumulation_steps=2,
                                              bf16=True)),
        ppo=PPOConfig(steps=60, batch_size=32, minibatch_size=8, ppo_epochs=2, n_prompts=1000, refresh_prompts=500,
                      ptx_batch_size=4, logprob_chunk=256, optim=OptimConfig(lr=1e-6, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
                                                          betas=(0.9, 0.999), eps=1e-5, bf16=True)),
        dpo=DPOConfig(beta=0.1, steps=150, batch_size=4, max_length=256, round_prompts=500, logprob_chunk=256,
                      optim=OptimConfig(lr=1e-6, warmup_steps=10, weight_decay=0.0, accumulation_steps=2, bf16=True)),
        grpo=GRPOConfig(steps=60, prompts_per_step=8, group_size=8, minibatch_size=16, logprob_chunk=256,
                        optim=OptimConfig(lr=1e-6, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
                                          betas=(0.9, 0.99), bf16=True)),
        tools=ToolConfig(train=SFTConfig(steps=150, batch_size=8, max_length=256, eval_every=50, n_train=3000,
                                         n_val=100, replay_share=0.0, logprob_chunk=256,
                                         optim=OptimConfig(lr=5e-5, warmup_steps=10, weight_decay=0.0,
                                                           accumulation_steps=2, bf16=True)),
                         n_eval=100),
        evaluation=EvalConfig(n_instruction_probes=100, n_per_cluster=30, n_paraphrased=20, n_rm_prompts=150,
                              n_ppo_prompts=150, n_pass_samples=16),
    ),
    # The same recipe on the smoke preset's small world, a few steps per stage: every stage of a
    # pretrained model once through on a CPU (README: "Your own model").
    "pretrained-smoke": Preset(
        name="pretrained-smoke", base_model=SMOLLM2, n_people=12, n_unknown=6, max_operand=10, train_documents=3000,
        val_documents=200,
        sft=SFTConfig(steps=6, batch_size=4, optim=OptimConfig(lr=5e-5, warmup_steps=2, weight_decay=0.0),
                      max_length=128, eval_every=6, n_train=200, n_val=16, replay_documents=200),
        reward=RewardConfig(n_prompts=24, n_norm_prompts=8, steps=6, batch_size=4, eval_every=6, max_new_tokens=24,
                            optim=OptimConfig(lr=1e-5, warmup_steps=1, weight_decay=0.0)),
        ppo=PPOConfig(steps=2, batch_size=8, minibatch_size=4, ppo_epochs=1, max_new_tokens=24, n_prompts=24,
                      refresh_prompts=8, ptx_batch_size=2, save_every=1,
                      optim=OptimConfig(lr=1e-6, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0,
                                        betas=(0.9, 0.999), eps=1e-5)),
        dpo=DPOConfig(beta=0.1, steps=4, batch_size=4, max_length=128, eval_every=4, round_prompts=8,
                      optim=OptimConfig(lr=1e-6, warmup_steps=1, weight_decay=0.0)),
        grpo=GRPOConfig(steps=2, prompts_per_step=2, group_size=4, minibatch_size=8, max_new_tokens=24, n_prompts=24,
                        eval_every=2, n_curve_prompts=2,
                        optim=OptimConfig(lr=1e-6, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0)),
        tools=ToolConfig(train=SFTConfig(steps=6, batch_size=4, max_length=128, eval_every=6, n_train=200, n_val=16,
                                         replay_share=0.0, optim=OptimConfig(lr=5e-5, warmup_steps=2,
                                                                             weight_decay=0.0)),
                         n_eval=12),
        evaluation=EvalConfig(n_instruction_probes=8, n_per_cluster=3, n_rm_prompts=12, n_ppo_prompts=12,
                              n_paraphrased=3, max_new_tokens=24, n_pass_samples=4, pass_k=(1, 4)),
    ),
}


def with_relatives_like_dpo(preset: Preset) -> Preset:
    """`preset` with SimPO, ORPO and KTO trained as its DPO is (steps, batch, optimiser, lengths,
    packing), each keeping its own coefficient: notebook 4 compares losses, not budgets."""
    same = {f.name: getattr(preset.dpo, f.name) for f in fields(PreferenceLossConfig)}
    return replace(preset, simpo=replace(preset.simpo, **same), orpo=replace(preset.orpo, **same),
                   kto=replace(preset.kto, **same))


PRESETS = {name: with_relatives_like_dpo(preset) for name, preset in PRESETS.items()}



def with_lora(preset: Preset, name: str, lora: LoRAConfig, lr_scale: float) -> Preset:
    """`preset` with low-rank adapters on every fine-tuning stage (SFT, the reward model, PPO,
    DPO, GRPO and the tools stage) and each of their learning rates `lr_scale` times higher:
    adapters start at zero and move only a sliver of the weights, so they take larger steps
    (a rule of thumb of LoRA practice, about ten times full fine-tuning's, not measured here)."""
    def adapted(optim: OptimConfig) -> OptimConfig:
        return replace(optim, lr=optim.lr * lr_scale, lora=lora)

    return replace(preset, name=name, sft=replace(preset.sft, optim=adapted(preset.sft.optim)),
                   reward=replace(preset.reward, optim=adapted(preset.reward.optim)),
                   ppo=replace(preset.ppo, optim=adapted(preset.ppo.optim)),
                   dpo=replace(preset.dpo, optim=adapted(preset.dpo.optim)),
                   simpo=replace(preset.simpo, optim=adapted(preset.simpo.optim)),
                   orpo=replace(preset.orpo, optim=adapted(preset.orpo.optim)),
                   kto=replace(preset.kto, optim=adapted(preset.kto.optim)),
                   grpo=replace(preset.grpo, optim=adapted(preset.grpo.optim)),
                   tools=replace(preset.tools, train=replace(preset.tools.train,
                                                             optim=adapted(preset.tools.train.optim))))


# The `pretrained` recipe with LoRA (Hu et al. 2021) of rank 16 on every linear layer of the blocks:
# the way a real model is fine-tuned on a laptop GPU (benchmarks/lora_memory.py measures what it saves).
PRESETS["pretrained-lora"] = with_lora(PRESETS["pretrained"], "pretrained-lora", LoRAConfig(rank=16, alpha=32.0),
                                       lr_scale=10.0)

DEFAULT_PRESET = "laptop"

#: The chain's stages in the order they run (`embiggen.pipeline.STAGES` says how each trains and what it
#: reports), and those whose model writes text, the ones `embiggen sample` and `chat --model` take: the
#: reward model scores answers. Here, with no torch, so that the command line can parse before it loads any.
STAGE_NAMES = ("base", "sft", "rm", "ppo", "dpo", "simpo", "orpo", "kto", "tools", "grpo")
LANGUAGE_MODELS = tuple(name for name in STAGE_NAMES if name != "rm")


def get_preset(name: str | Preset | None = None, base: str | None = None) -> Preset:
    """The preset called `name`, else ``$EMBIGGEN_PRESET``, else ``laptop``; starting from the
    causal LM `base`, else ``$EMBIGGEN_BASE``, else the preset's own. ``base=""`` means the
    embedded model, whatever the environment says (notebook 1 pretrains it)."""
    if isinstance(name, Preset):
        return replace(name, base_model=base) if base is not None else name
    name = name or os.environ.get("EMBIGGEN_PRESET") or DEFAULT_PRESET
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    if base is None:
        base = os.environ.get("EMBIGGEN_BASE") or None
    return PRESETS[name] if base is None else replace(PRESETS[name], base_model=base)


def check_preset(preset) -> Preset:
    """`preset`, if it is a `Preset`. A preset is resolved once, where a run starts (`get_preset` in
    the CLI, `setup()` in a notebook); every function inside the package takes the `Preset` itself."""
    if not isinstance(preset, Preset):
        raise UserError(f"expected a Preset, got {preset!r}: in a notebook use the one setup() returns "
                        f"(preset = setup()), elsewhere get_preset({preset!r})")
    return preset

