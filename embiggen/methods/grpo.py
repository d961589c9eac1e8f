"""Step 4 — GRPO: reinforcement learning with verifiable rewards, no critic.

PPO (notebook 3) needs three models beside the policy: a reward model, a reference and a
value head that learns what each state is worth. When a program can check the answer, the
reward model goes (`embiggen.judging.verifiers`). Group Relative Policy Optimisation (GRPO;
Shao et al. 2024, DeepSeekMath, https://arxiv.org/abs/2402.03300; used for DeepSeek-R1, 2025)
drops the value head too: for each prompt x it samples a *group* of G answers y_1 .. y_G from
the current policy, scores each, and uses the group itself as the baseline,

    A_i = ( r_i - mean(r_1 .. r_G) ) / std(r_1 .. r_G)

so an answer is pushed up when it beats its siblings and down when it trails them. RLOO
(Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740) takes the mean of the *other* G - 1
answers instead (`baseline="leave_one_out"`), an unbiased baseline. Every token of answer i gets
the answer's advantage, and the policy maximises PPO's clipped surrogate against the policy that
sampled the answers (pi_old), with rho_t = pi_theta(y_t | x, y_<t) / pi_old(y_t | x, y_<t):

    l_{i,t} = - min( rho_t A_i , clip(rho_t, 1 - eps_low, 1 + eps_high) A_i )  [ + beta k3_{i,t} ]

How the per-token terms are averaged is the difference between the variants (`loss_type`):

    "grpo"     1/G sum_i  1/|y_i| sum_t l_{i,t}        per answer, then over answers (the paper)
    "dapo"     sum_{i,t} l_{i,t}  /  sum_i |y_i|         over every token of the batch
                                                        (DAPO, Yu et al. 2025, https://arxiv.org/abs/2503.14476)
    "dr_grpo"  sum_{i,t} l_{i,t}  /  (G * L_max)         over a constant (Dr. GRPO, Liu et al. 2025,
                                                        https://arxiv.org/abs/2503.20783)

GRPO's per-answer mean gives each token of a short answer more weight than a token of a long
one, so among wrong answers (A < 0) long ones are punished less per token: a pull towards
length. DAPO weighs every token alike; Dr. GRPO also drops the division by the group's
standard deviation (`scale_rewards=False`), which favours questions that are nearly always or
nearly never right. DeepSeekMath adds beta * k3, k3 = pi_ref/pi - log(pi_ref/pi) - 1, to the
loss to stay near the reference; like TRL, the default here is beta = 0.

A group whose G answers all score the same has A_i = 0 for every answer: it carries no signal.
Such groups are counted (`zero_signal`), and a batch made only of them is a step with zero
gradient, never a NaN. Their answers contribute exactly nothing to the loss's numerator, so with
beta = 0 the update skips their forward and backward passes (the denominators still count them,
so the loss is the same number).
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from embiggen.data.tasks import TaskExample
from embiggen.judging.verifiers import exact_reward
from embiggen.lm.distributed import (all_reduce_max, all_reduce_sum, gather_shares, gather_texts, gather_weights,
                                     shard, shard_weights, world_size)
from embiggen.lm.generate import (answer_logprobs, decode_responses, episode_logprobs, prompt_width,
                                  sample_grouped_episodes, widen_responses)
from embiggen.lm.lora import adapters_disabled, add_adapters, has_adapters
from embiggen.lm.training import (load_resume_point, lr_at, make_optimizer, mixed_precision, optimizer_step,
                                  save_resume_point)
from embiggen.methods.ppo import disable_dropout, masked_mean
from embiggen.presets import GRPOConfig
from embiggen.utils import pick_device

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
BASELINES = ("mean", "leave_one_out")


class GRPODivergence(RuntimeError):
    """GRPO blew up (a loss that is not a number)."""


# ---------------------------------------------------------------------------------------
# Small pieces, each tested against a plain reference computation
# ---------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, scale_rewards: bool = True, baseline: str = "mean",
                     eps: float = 1e-4) -> torch.Tensor:
    """A_i for rewards of shape (prompts, G): the reward minus the group's mean (or, with
    `baseline="leave_one_out"`, minus the mean of the other G - 1), divided by the group's
    standard deviation (unbiased, + eps) if `scale_rewards`. A group of equal rewards gets 0."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, G) with G >= 2, got shape {tuple(rewards.shape)}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; valid baselines: {', '.join(BASELINES)}")
    G = rewards.shape[1]
    if baseline == "mean":
        advantages = rewards - rewards.mean(1, keepdim=True)
    else:
        advantages = rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1)
    if scale_rewards:
        advantages = advantages / (rewards.std(1, keepdim=True) + eps)
    return advantages


def zero_signal(rewards: torch.Tensor) -> torch.Tensor:
    """Per group (rows of `rewards`): did every answer score the same? Such a group teaches nothing."""
    return rewards.max(1).values == rewards.min(1).values


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = rho - log rho - 1, rho = pi_ref / pi: DeepSeekMath's KL term (>= 0)."""
    log_rho = ref_logprobs - logprobs
    return torch.expm1(log_rho) - log_rho


def clipped_token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                         cliprange: float, cliprange_high: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) per token, with A (one per answer) spread
    over its tokens; and where the clipped term won (the clip fraction's numerator)."""
    high = cliprange if not cliprange_high else cliprange_high
    ratio = torch.exp(logprobs - old_logprobs)
    a = advantages.unsqueeze(1)
    unclipped, clipped = -a * ratio, -a * torch.clamp(ratio, 1.0 - cliprange, 1.0 + high)
    return torch.max(unclipped, clipped), (clipped > unclipped)


def aggregate(token_losses: torch.Tensor, mask: torch.Tensor, loss_type: str, n_answers: int | None = None,
              n_tokens: int | None = None, max_tokens: int | None = None) -> torch.Tensor:
    """Average per-token losses over a batch of answers as `loss_type` says (module docstring).
    `token_losses` and `mask` may be a subset of the batch's answers (those with a nonzero
    advantage): `n_answers` and `n_tokens` are then the whole batch's answer and token counts,
    and `max_tokens` (Dr. GRPO's L_max) the longest answer allowed."""
    mask = mask.to(token_losses.dtype)
    n_answers = token_losses.shape[0] if n_answers is None else n_answers
    if loss_type == "grpo":
        per_answer = (token_losses * mask).sum(1) / mask.sum(1).clamp(min=1)
        return per_answer.sum() / max(1, n_answers)
    if loss_type == "dapo":
        total = mask.sum().item() if n_tokens is None else n_tokens
        return (token_losses * mask).sum() / max(1, total)
    if loss_type == "dr_grpo":
        length = mask.shape[1] if max_tokens is None else max_tokens
        return (token_losses * mask).sum() / max(1, n_answers * length)
    raise ValueError(f"unknown loss_type {loss_type!r}; valid types: {', '.join(LOSS_TYPES)}")


def grpo_loss(logprobs, old_logprobs, advantages, mask, cliprange: float = 0.2, loss_type: str = "grpo",
              cliprange_high: float | None = None, ref_logprobs=None, kl_coef: float = 0.0,
              n_answers: int | None = None, n_tokens: int | None = None,
              max_tokens: int | None = None) -> tuple[torch.Tensor, dict]:
    """GRPO's loss on a batch of answers (log-probs (answers, T), advantages (answers,)), and its
    clip fraction; with `kl_coef` > 0, plus beta * k3 to `ref_logprobs` per token."""
    losses, clipped = clipped_token_losses(logprobs, old_logprobs, advantages, cliprange, cliprange_high)
    if kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        losses = losses + kl_coef * kl_k3(logprobs, ref_logprobs)
    loss = aggregate(losses, mask, loss_type, n_answers, n_tokens, max_tokens)
    return loss, {"clip_frac": masked_mean(clipped.float(), mask).item() if mask.sum() > 0 else 0.0}


# ---------------------------------------------------------------------------------------
# A group of answers per prompt, and one GRPO step
# ---------------------------------------------------------------------------------------
@dataclass
class Groups:
    """G sampled answers to each of a batch's prompts, prompt by prompt (answer j of prompt i is row i*G + j)."""
    prompts: list            # TaskExamples, one per group
    episodes: dict           # sample_episodes' tensors over all P * G answers
    texts: list[str]
    finished: torch.Tensor
    rewards: torch.Tensor    # (P, G)
    gold: torch.Tensor       # (P, G): exact-match correctness (the same as rewards with the exact verifier)
    advantages: torch.Tensor  # (P, G)
    old_logprobs: torch.Tensor | None  # (P * G, T); None when the update is exactly on-policy
    ref_logprobs: torch.Tensor | None = None  # (P * G, T) under the reference; None without one


@dataclass
class GRPOLog:
    steps: list[int] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    def series(self, key: str) -> list[float]:
        return [r[key] for r in self.rows if key in r]


class GRPOTrainer:
    """The policy, its optimiser and a verifier (and, to measure the KL or to pay k3, the frozen
    reference); `step(prompts)` samples a group per prompt, scores it, updates, and returns its
    statistics."""

    def __init__(self, policy_lm, tokenizer, verifier, cfg: GRPOConfig, ref_lm=None, device=None, seed: int = 0):
        if cfg.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {cfg.loss_type!r}; valid types: {', '.join(LOSS_TYPES)}")
        if cfg.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (a group is its own baseline), got {cfg.group_size}")
        if cfg.kl_coef > 0 and ref_lm is None:
            raise ValueError("kl_coef > 0 needs ref_lm (the reference the k3 term pulls towards)")
        self.cfg, self.tokenizer, self.verifier = cfg, tokenizer, verifier
        self.device = device or pick_device()
        disable_dropout(policy_lm)
        if cfg.optim.lora.rank:  # low-rank adapters train, the policy's own weights stay as they were
            add_adapters(policy_lm, cfg.optim.lora)
        self.policy = policy_lm.to(self.device)
        # the frozen reference (no_grad only); with LoRA, the policy with its adapters off, and `ref_lm` is not kept
        self.has_reference = ref_lm is not None
        self.ref_policy = ref_lm.to(self.device).eval() if self.has_reference and not has_adapters(policy_lm) else None
        shard_weights(self.policy)  # EMBIGGEN_SHARD=weights: each rank keeps a slice of every layer
        self.optimizer = make_optimizer(self.policy.parameters(), cfg.optim)
        self.generator = torch.Generator().manual_seed(seed)
        self.seed, self.n_steps = seed, 0

    @property
    def on_policy(self) -> bool:
        """One gradient step per batch: pi_old is the policy being updated, so rho = 1 exactly and
        the sampling policy's log-probabilities are the update's own, detached."""
        return self.cfg.epochs == 1 and self.cfg.minibatch_size >= self.cfg.prompts_per_step * self.cfg.group_size

    @torch.no_grad()
    def sample_groups(self, prompts: list[TaskExample]) -> Groups:
        """G answers to each prompt from the current policy, each scored by the verifier, and the
        group advantages. The sampling policy's log-probabilities are computed when the update
        needs them (several gradient steps per batch) or the KL is measured (a reference is given),
        and then the reference's too. Every token is drawn with its own uniform from one generator
        seeded by the step (`generate.draw_tokens`): on several processes each rank samples and
        scores the groups of its share of the prompts, and the shares are gathered into the groups
        one process samples (up to float rounding)."""
        cfg, G, tok = self.cfg, self.cfg.group_size, self.tokenizer
        self.policy.eval()
        instructions = [e.instruction for e in prompts]
        seeded = torch.Generator().manual_seed(self.seed * 100003 + self.n_steps)
        uniforms = torch.rand(len(prompts) * G, cfg.max_new_tokens, generator=seeded)
        mine = shard(list(range(len(prompts))))
        rows = [i * G + j for i in mine for j in range(G)]
        episodes = sample_grouped_episodes(self.policy, tok, [instructions[i] for i in mine], G, cfg.max_new_tokens,
                                           cfg.temperature, uniforms=uniforms[rows],
                                           width=prompt_width(tok, instructions) if world_size() > 1 else None,
                                           synced=world_size() > 1)  # each prompt read once
        episodes = widen_responses(episodes, int(all_reduce_max(episodes["responses"].shape[1])), tok.pad_token_id)
        texts, _ = decode_responses(tok, episodes["responses"])  # the text every stage judges
        examples = [prompts[i] for i in mine for _ in range(G)]
        rewards = torch.tensor([self.verifier(e, t) for e, t in zip(examples, texts)], dtype=torch.float32)
        gold = torch.tensor([exact_reward(e, t) for e, t in zip(examples, texts)], dtype=torch.float32)
        old = ref = None
        with mixed_precision(cfg.optim, self.device):  # as in the update: the ratio starts at 1
            if not self.on_policy or self.has_reference:
                old = episode_logprobs(self.policy, episodes, cfg.temperature, cfg.logprob_chunk)
            if self.has_reference:
                ref = self.reference_logprobs(episodes)
        whole = lambda t: gather_shares(t, block=G) if t is not None else None  # noqa: E731 - prompts' order
        episodes = {k: v if k == "prompt_len" else whole(v) for k, v in episodes.items()}
        rewards, gold = whole(rewards).view(len(prompts), G), whole(gold).view(len(prompts), G)
        advantages = group_advantages(rewards, cfg.scale_rewards, cfg.baseline)
        return Groups(prompts, episodes, gather_texts(texts, block=G), episodes["finished"], rewards, gold,
                      advantages, whole(old), whole(ref))

    def reference_logprobs(self, episodes: dict) -> torch.Tensor:
        """log pi_ref of the sampled tokens: the reference model's, or with LoRA the policy's with
        its adapters switched off."""
        cfg = self.cfg
        if self.ref_policy is not None:
            return episode_logprobs(self.ref_policy, episodes, cfg.temperature, cfg.logprob_chunk)
        with adapters_disabled(self.policy):
            return episode_logprobs(self.policy, episodes, cfg.temperature, cfg.logprob_chunk)

    def step(self, prompts: list[TaskExample]) -> dict:
        """One GRPO step: a group of answers to each prompt, then the update; its statistics."""
        started = time.perf_counter()
        groups = self.sample_groups(prompts)
        row = self.update(groups)
        seconds = time.perf_counter() - started
        row.update({"seconds": seconds, "answers_per_second": groups.rewards.numel() / seconds,
                    "sample_seconds": seconds - row.pop("update_seconds")})
        return row

    def update(self, groups: Groups) -> dict:
        """The clipped-surrogate update on sampled groups (`cfg.epochs` passes in minibatches)."""
        cfg = self.cfg
        started = time.perf_counter()
        ep, mask = groups.episodes, groups.episodes["mask"].float()
        advantages = groups.advantages.flatten().to(self.device)
        ref_logprobs = groups.ref_logprobs
        if ref_logprobs is None and self.has_reference:  # groups sampled elsewhere (push_of_one_update)
            with torch.no_grad(), mixed_precision(cfg.optim, self.device):
                ref_logprobs = self.reference_logprobs(ep)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.n_steps, cfg.steps, cfg.optim)

        self.policy.train()
        losses, clip_fracs, updated, entropy_sum, entropy_tokens = [], [], 0, 0.0, 0
        for _ in range(cfg.epochs):
            for minibatch in torch.randperm(len(advantages), generator=self.generator).split(cfg.minibatch_size):
                # every answer of the minibatch counts in the loss's denominators; those whose advantage is 0
                # add exactly 0 to its numerator (without k3), so their forward and backward passes are skipped
                n_answers, n_tokens = len(minibatch), int(mask[minibatch].sum().item())
                idx = minibatch if cfg.kl_coef > 0 else minibatch[advantages[minibatch] != 0]
                if len(idx) == 0:
                    continue  # no signal: zero gradient, so no update (Adam's momentum moves nothing on no evidence)
                # several processes: every rank holds all the answers and takes its share; the loss's
                # denominators stay the whole minibatch's, so the ranks' losses add up to the whole loss
                idx = shard(idx, may_be_empty=True).to(self.device)
                loss, clip_frac, entropy_here, tokens_here = None, 0.0, 0.0, 0  # an empty share adds nothing
                if len(idx):
                    rows = {k: ep[k][idx] for k in ("sequences", "attention_mask", "position_ids", "responses")}
                    with mixed_precision(cfg.optim, self.device):
                        logprobs, entropy = answer_logprobs(self.policy, rows, cfg.temperature, cfg.logprob_chunk)
                    old = logprobs.detach() if self.on_policy else groups.old_logprobs[idx]
                    loss, s = grpo_loss(logprobs, old, advantages[idx], mask[idx], cfg.cliprange, cfg.loss_type,
                                        cfg.cliprange_high, ref_logprobs[idx] if ref_logprobs is not None else None,
                                        cfg.kl_coef, n_answers=n_answers, n_tokens=n_tokens,
                                        max_tokens=cfg.max_new_tokens)
                    if not torch.isfinite(loss):
                        raise GRPODivergence(f"GRPO's loss became {loss.item()} at step {self.n_steps + 1}; lower "
                                             f"the learning rate (now {cfg.optim.lr})")
                    clip_frac = s["clip_frac"]
                    entropy_here = (entropy.detach() * mask[idx]).sum().item()
                    tokens_here = int(mask[idx].sum().item())
                optimizer_step(self.policy, self.optimizer, loss, cfg.optim.grad_clip)
                answers = all_reduce_sum(len(idx))  # the ranks' shares add up to the minibatch's (1 process: its own)
                losses.append(all_reduce_sum(loss.item() if loss is not None else 0.0))
                clip_fracs.append(all_reduce_sum(clip_frac * len(idx) / answers))
                updated += int(answers)
                entropy_sum += all_reduce_sum(entropy_here)
                entropy_tokens += int(all_reduce_sum(tokens_here))
        self.policy.eval()
        self.n_steps += 1
        row = {
            "step": self.n_steps,
            "reward": groups.rewards.mean().item(),
            "accuracy": groups.gold.mean().item(),  # exact match, whatever the verifier
            "zero_signal": zero_signal(groups.rewards).float().mean().item(),
            "all_correct": (groups.gold.min(1).values == 1).float().mean().item(),
            "response_length": mask.sum(1).mean().item(),
            "finished_rate": groups.finished.float().mean().item(),
            # over the tokens of the answers that were updated (None when a batch had no signal at all)
            "entropy": entropy_sum / entropy_tokens if entropy_tokens else None,
            "loss": sum(losses) / len(losses) if losses else 0.0,
            "clip_frac": sum(clip_fracs) / len(clip_fracs) if clip_fracs else 0.0,
            "updated_answers": updated / cfg.epochs,
            "lr": self.optimizer.param_groups[0]["lr"],
            "update_seconds": time.perf_counter() - started,
        }
        for cluster in sorted({e.cluster for e in groups.prompts}):
            rows_of = [i for i, e in enumerate(groups.prompts) if e.cluster == cluster]
            row[f"reward.{cluster}"] = groups.rewards[rows_of].mean().item()
        if ref_logprobs is not None:  # k1 summed over each sampled answer, averaged: KL(pi_old || pi_ref)
            row["kl"] = ((groups.old_logprobs - ref_logprobs) * mask).sum(1).mean().item()
        return row


# ---------------------------------------------------------------------------------------
# A whole GRPO run: steps on random batches of prompts, resumable
# ---------------------------------------------------------------------------------------
def train_grpo(trainer: GRPOTrainer, prompts: list[TaskExample], steps: int, seed: int = 0, progress: bool = True,
               callback=None, evaluate=None, eval_every: int = 10, desc: str = "grpo",
               resume_dir: Path | None = None, save_every: int = 10) -> GRPOLog:
    """`steps` GRPO steps, each on `cfg.prompts_per_step` prompts drawn from `prompts`.
    `evaluate(policy)` (a dict of held-out figures) runs before the first step and every
    `eval_every` steps, its figures added to that step's row; callback(step, row) after each
    (live plots). With `resume_dir`, a resume point every `save_every` steps: an interrupted run
    continues where it stopped and ends with the same weights as an uninterrupted one."""
    rng = random.Random(seed)
    log = GRPOLog()
    state = (load_resume_point(resume_dir, trainer.policy, trainer.optimizer, trainer.generator)
             if resume_dir is not None else None)
    if state is not None:
        trainer.n_steps = state["n_steps"]
        version, internal, gauss = state["rng_state"]
        rng.setstate((version, tuple(internal), gauss))
        log = GRPOLog([r["step"] for r in state["rows"]], state["rows"])
    elif evaluate is not None:
        row = {"step": 0, **evaluate(trainer.policy)}
        log.steps.append(0)
        log.rows.append(row)
        if callback is not None:
            callback(0, row)
    bar = tqdm(total=steps, initial=trainer.n_steps, desc=desc, disable=not progress, leave=True)
    while trainer.n_steps < steps:
        row = trainer.step(rng.sample(prompts, min(trainer.cfg.prompts_per_step, len(prompts))))
        if evaluate is not None and (row["step"] % eval_every == 0 or row["step"] == steps):
            row.update(evaluate(trainer.policy))
        log.steps.append(row["step"])
        log.rows.append(row)
        bar.set_postfix(reward=f"{row['reward']:.2f}", zero=f"{row['zero_signal']:.2f}",
                        **({"eval": f"{row['eval_accuracy']:.2f}"} if "eval_accuracy" in row else {}))
        bar.update(1)
        if resume_dir is not None and row["step"] % save_every == 0 and row["step"] < steps:
            version, internal, gauss = rng.getstate()
            save_resume_point(Path(resume_dir), trainer.policy, trainer.optimizer, trainer.generator,
                              {"n_steps": trainer.n_steps, "rows": json_rows(log.rows),
                               "rng_state": [version, list(internal), gauss]})
        if callback is not None:
            callback(row["step"], row)
    bar.close()
    gather_weights(trainer.policy)  # whole again (EMBIGGEN_SHARD=weights): to save, evaluate, go on
    return log


def json_rows(rows: list[dict]) -> list[dict]:
    """Rows as strict JSON can hold them (NaN, a rate of nothing, as None)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


# ---------------------------------------------------------------------------------------
# One update on one group, token by token (notebook 5's widget)
# ---------------------------------------------------------------------------------------
def push_of_one_update(policy_lm, tokenizer, example: TaskExample, verifier, cfg: GRPOConfig, group_size: int,
                       seed: int = 0) -> dict:
    """Sample `group_size` answers to `example` from (a copy of) the policy, score them, and make
    one GRPO update on that group alone: each answer's text, reward and advantage, and how much
    the update changed the log-probability of each of its tokens. The policy is not changed."""
    one = replace(cfg, prompts_per_step=1, group_size=group_size, minibatch_size=group_size, epochs=1, kl_coef=0.0)
    trainer = GRPOTrainer(copy.deepcopy(policy_lm), tokenizer, verifier, one, device=next(policy_lm.parameters()).device,
                          seed=seed)
    groups = trainer.sample_groups([example])
    before = episode_logprobs(trainer.policy, groups.episodes, one.temperature)
    trainer.update(groups)
    after = episode_logprobs(trainer.policy, groups.episodes, one.temperature)
    mask, answers = groups.episodes["mask"], []
    for i in range(group_size):
        n = int(mask[i].sum())
        ids = groups.episodes["responses"][i, :n].tolist()
        answers.append({"text": groups.texts[i], "reward": groups.rewards[0, i].item(),
                        "advantage": groups.advantages[0, i].item(),
                        "tokens": [tokenizer.decode([t]) for t in ids],
                        "push": (after[i, :n] - before[i, :n]).tolist()})
    return {"answers": answers, "zero_signal": bool(zero_signal(groups.rewards)[0])}
