"""Step 3b — PPO with a KL penalty: raise the reward, stay close to the SFT model.

The RLHF recipe of Ziegler et al. (2019, https://arxiv.org/abs/1909.08593) and InstructGPT
(Ouyang et al. 2022, https://arxiv.org/abs/2203.02155) maximises, over prompts x and
responses y ~ pi_theta(. | x),

    E[ r_phi(x, y) ]  -  beta * KL( pi_theta(. | x) || pi_SFT(. | x) )

where r_phi is the reward model and pi_SFT a frozen copy of the SFT policy (the
*reference*). The penalty is paid per token: for response tokens y_1 .. y_T,

    r_t = - beta * KL_t            KL_t = log pi_theta(y_t | .) - log pi_ref(y_t | .)   (k1)
    r_T = r_T + r_phi(x, y)         the reward model's score arrives at the last token

(k3 = (rho - 1) - log rho with rho = pi_ref / pi_theta is the other estimator, Schulman 2020:
never negative, lower variance, and every step logs it beside k1 as a monitor, `kl_k3`. As the
per-token *reward* it is offered but not the default: its expectation is the KL's value, but
PPO treats a reward as a constant, and the policy gradient of a k3 reward is not the gradient
of the KL: biased, Tang & Munos 2025, https://arxiv.org/abs/2506.09477. Where k3 is a loss
differentiated through, as GRPO's KL term is (`embiggen.methods.grpo`), its on-policy gradient
is that of KL(pi_ref || pi), the other direction: a sound regulariser, if not this one.) PPO
(Schulman et al. 2017, https://arxiv.org/abs/1707.06347) then treats each response token as
an action:

* a value head V(s_t) on the policy's last hidden state estimates the return, starting at 0;
  or (`value_model="reward_model"`) a separate critic, a copy of the reward model whose head is
  rescaled to the normalised score, so that it starts out with an estimate of the return
  instead of 0 (Huang et al. 2024, "The N+ implementation details of RLHF with PPO",
  https://arxiv.org/abs/2403.17031; TRL's PPOTrainer does the same);
* GAE (Schulman et al. 2016): delta_t = r_t + gamma V_{t+1} - V_t,
  A_t = delta_t + gamma lambda A_{t+1}, returns R_t = A_t + V_t; advantages are whitened;
* for a few epochs over minibatches of the rollout, with rho_t = pi_theta / pi_old,

    L_policy = mean_t max( -A_t rho_t , -A_t clip(rho_t, 1 - eps, 1 + eps) )
    L_value  = 1/2 mean_t max( (V_t - R_t)^2 , (clip(V_t, V_old -/+ eps_v) - R_t)^2 )
    L        = L_policy + c_v L_value

* beta is fixed, or adapted by Ziegler et al.'s proportional controller towards a target KL;
* iterated RLHF: a policy soon finds answers the reward model never saw and scores wrongly
  (reward hacking). So, as InstructGPT did with comparisons of its PPO policies' samples and
  Bai et al. (2022) did online, training runs in `rounds`: between rounds the labeler ranks
  samples of the *current policy*, and the reward model is retrained on all pairs so far;
* optionally PPO-ptx (InstructGPT, eq. 2): L += gamma_ptx * (language-model loss on
  demonstration data), which pays back the "alignment tax" on ordinary tasks. InstructGPT
  mixed in pretraining text; we mix in the SFT task demonstrations (without the mixture's
  confident answers to alignment prompts, which would pull against PPO).

Log-probabilities are always computed from logits / temperature — the distribution the
responses were actually sampled from. Responses stop at EOS; one that never ends loses
`missing_eos_penalty` from its score. Dropout is switched off, so the rollout's
log-probabilities and the update's agree exactly before the first step.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from embiggen.data.world import ALIGNMENT_KINDS
from embiggen.lm.distributed import (all_reduce_max, all_reduce_sum, gather_shares, gather_texts, gather_weights,
                                     shard, shard_weights, world_size)
from embiggen.lm.generate import (chunked_response_logprobs, decode_responses, episode_logprobs, output_head,
                                  position_ids_from, prompt_width, response_logprobs,
                                  sample_grouped_episodes, widen_responses)
from embiggen.lm.lora import adapters_disabled, add_adapters, has_adapters
from embiggen.lm.training import (load_resume_point, make_optimizer, mixed_precision, optimizer_step,
                                  save_resume_point)
from embiggen.methods.sft import batch_loss
from embiggen.presets import PPOConfig
from embiggen.utils import pick_device


class PPODivergence(RuntimeError):
    """PPO blew up (NaN, or a KL far beyond anything sensible)."""


# ---------------------------------------------------------------------------------------
# Small pieces, each tested against a plain reference computation
# ---------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance); with shift_mean=False the
    mean is added back (TRL whitens rewards that way, keeping their sign)."""
    mean = masked_mean(x, mask)
    centred = x - mean
    n = mask.sum()
    var = (centred.pow(2) * mask).sum() / (n - 1).clamp(min=1)
    whitened = centred * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.
    k1 = log pi - log pi_ref (unbiased, can be negative); k3 = (rho - 1) - log rho, rho = pi_ref / pi
    (unbiased for the KL's value, never negative, lower variance; http://joschu.net/blog/kl-approx.html).
    As a reward, only k1 gives the KL's policy gradient: k3's is biased (Tang & Munos 2025)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; valid estimators: k1, k3")


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_t = -beta * KL_t on every response token, plus the score on the last one."""
    rewards = -kl_coef * kl * mask
    last = mask.sum(1).long().clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (padding after the end has mask 0
    and contributes nothing). Returns (advantages, returns = advantages + values)."""
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate, plus the clip fraction and the approximate KL to the old policy."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask).item(),
             "approx_kl": (0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)).item()}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the response tokens: 1 for a critic that foresees every
    return, 0 for one no better than their mean, below 0 for worse (nan if the returns are constant)."""
    v, r = values[mask.bool()], returns[mask.bool()]
    var = r.var(unbiased=False).item()
    return 1.0 - (r - v).var(unbiased=False).item() / var if var > 0 else float("nan")


def clipped_value_loss(values, old_values, returns, mask, cliprange_value: float) -> torch.Tensor:
    """1/2 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2), masked mean."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. (2019), section 2.2: beta <- beta * (1 + K_beta * e), with
    e = clip(KL / target - 1, -0.2, 0.2) and K_beta = n_steps / horizon."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_controller(cfg: PPOConfig):
    return (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
            else FixedKLController(cfg.kl_coef))


# ---------------------------------------------------------------------------------------
# Policy with a value head
# ---------------------------------------------------------------------------------------
class PolicyWithValueHead(nn.Module):
    """A causal LM plus a scalar value head on its last hidden state (one shared trunk), or,
    with `critic`, a separate value network: a sequence-classification model with one label
    (the reward model's architecture), read at every position."""

    def __init__(self, lm, critic=None):
        super().__init__()
        self.lm = lm
        self.critic = critic
        if critic is None:
            self.value_head = nn.Linear(lm.config.hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def critic_values(self, input_ids, attention_mask, position_ids, response_len: int) -> torch.Tensor:
        """The separate critic's V(s_t) at the positions before each response token."""
        hidden = self.critic.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                        use_cache=False).last_hidden_state[:, -(response_len + 1):-1]
        return self.critic.score(hidden).squeeze(-1)

    def forward(self, input_ids, attention_mask, position_ids, response_len: int):
        """Logits and values at the `response_len` positions that predict the response tokens
        (the language-model head is not wasted on the prompt)."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=self.critic is None, use_cache=False, logits_to_keep=response_len + 1)
        if self.critic is not None:
            return out.logits[:, :-1], self.critic_values(input_ids, attention_mask, position_ids, response_len)
        values = self.value_head(out.hidden_states[-1][:, -(response_len + 1):-1]).squeeze(-1)
        return out.logits[:, :-1], values

    def logprobs_and_values(self, input_ids, attention_mask, position_ids, responses, temperature: float,
                            chunk: int = 0):
        """log pi(y_t | ...), the entropy of pi at each response position, and the values V(s_t).
        With `chunk`, the log-probs come from the last hidden states `chunk` positions at a time
        (`chunked_response_logprobs`: the same numbers without the whole vocabulary's logits)."""
        n = responses.shape[1]
        if not chunk:
            logits, values = self(input_ids, attention_mask, position_ids, n)
            return (*response_logprobs(logits, responses, temperature), values)
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False).last_hidden_state[:, -(n + 1):-1]
        logprobs, entropy = chunked_response_logprobs(output_head(self.lm), hidden, responses,
                                                      temperature, chunk)
        if self.critic is not None:
            return logprobs, entropy, self.critic_values(input_ids, attention_mask, position_ids, n)
        return logprobs, entropy, self.value_head(hidden).squeeze(-1)


def critic_from_reward_model(reward_model) -> nn.Module:
    """A value network to start PPO's critic from: a copy of the reward model (a `RewardModel`,
    `embiggen.methods.reward`) whose scalar head is rescaled so that it outputs the *normalised*
    score PPO is rewarded with, (raw - mean) / std."""
    model = getattr(reward_model, "model", None)
    if model is None or not hasattr(model, "score"):
        raise ValueError("value_model='reward_model' needs a trained reward model (a RewardModel with a scalar "
                         f"head); got {type(reward_model).__name__}")
    critic = copy.deepcopy(model)
    with torch.no_grad():
        critic.score.weight.div_(reward_model.std)
        if critic.score.bias is None:
            critic.score.bias = nn.Parameter(torch.zeros(1, device=critic.score.weight.device))
        critic.score.bias.sub_(reward_model.mean).div_(reward_model.std)
    return critic


#: The names under which Hugging Face models keep a dropout probability: in their config, and
#: copied from it into attention modules at construction (Llama's `attention_dropout`), where
#: changing the config no longer reaches it.
DROPOUT_NAMES = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop", "embd_pdrop")


def disable_dropout(model: nn.Module) -> None:
    """No dropout anywhere in `model`, in training mode too: a policy's log-probabilities in its
    update must be those of the same distribution as in its rollout (and as its reference's),
    or the ratio to itself is not 1 before the first step (TRL disables it too)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in DROPOUT_NAMES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name in DROPOUT_NAMES:
        if config is not None and hasattr(config, name):
            setattr(config, name, 0.0)


# ---------------------------------------------------------------------------------------
# Rollouts and one PPO step
# ---------------------------------------------------------------------------------------
@dataclass
class Rollout:
    prompts: list            # TaskExamples
    sequences: torch.Tensor  # prompt (left-padded) + response
    attention_mask: torch.Tensor
    prompt_len: int
    mask: torch.Tensor       # response tokens that count
    finished: torch.Tensor
    responses: list[str]
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor     # reward model, normalised, EOS penalty applied
    rm_scores: torch.Tensor  # reward model, normalised, no penalty
    gold: torch.Tensor
    entropy: torch.Tensor
    categories: list[str]    # the labeler's verdict on each response ("correct", "hedged", "complied", ...)


def category_counts(prompts, categories: list[str]) -> dict[str, dict[str, int]]:
    """How many responses of a batch fell in each of the labeler's categories, per kind of prompt:
    {"task": {"correct": 40, "wrong": 8}, "unknown_person": {"hedged": 3, ...}, ...}."""
    counts: dict[str, dict[str, int]] = {}
    for example, category in zip(prompts, categories):
        kind = example.cluster if example.cluster in ALIGNMENT_KINDS else "task"
        counts.setdefault(kind, {})
        counts[kind][category] = counts[kind].get(category, 0) + 1
    return counts


@dataclass
class PPOLog:
    steps: list[int] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    #: seconds earlier processes spent on this run before the resume point it continued from
    resumed_seconds: float = 0.0

    def series(self, key: str) -> list[float]:
        return [r[key] for r in self.rows]


class PPOTrainer:
    """Holds the policy (with value head), the frozen reference, the reward model and the
    labeler; `step(prompts)` does one rollout and one PPO update and returns its statistics."""

    def __init__(self, policy_lm, ref_lm, tokenizer, reward_model, labeler, cfg: PPOConfig, device=None,
                 seed: int = 0, ptx_data=None):
        self.cfg, self.tokenizer, self.reward_model, self.labeler = cfg, tokenizer, reward_model, labeler
        self.device = device or pick_device()
        disable_dropout(policy_lm)
        disable_dropout(ref_lm)
        if cfg.value_model not in ("head", "reward_model"):
            raise ValueError(f"unknown value_model {cfg.value_model!r}; valid: 'head' (on the policy's trunk), "
                             f"'reward_model' (a critic initialised from the reward model)")
        critic = critic_from_reward_model(reward_model) if cfg.value_model == "reward_model" else None
        if critic is not None:
            disable_dropout(critic)
        if cfg.optim.lora.rank:  # low-rank adapters train, the policy's own weights stay as they were
            add_adapters(policy_lm, cfg.optim.lora)
        self.policy = PolicyWithValueHead(policy_lm, critic).to(self.device)
        # the frozen reference (only ever run under torch.no_grad); with LoRA, the policy itself with its adapters
        # off, and `ref_lm` is not kept
        self.ref_policy = None if has_adapters(policy_lm) else ref_lm.to(self.device).eval()
        shard_weights(self.policy)  # EMBIGGEN_SHARD=weights: each rank keeps a slice of every layer
        self.optimizer = make_optimizer(self.policy.parameters(), cfg.optim)
        self.kl_ctl = kl_controller(cfg)
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.n_steps = 0
        self.ptx_data = ptx_data  # an embiggen.methods.sft.SFTData of demonstrations, for PPO-ptx
        if cfg.ptx_coef > 0 and ptx_data is None:
            raise ValueError("ptx_coef > 0 needs ptx_data (demonstrations to keep the language-model loss on)")
        if cfg.optim.accumulation_steps != 1:
            raise ValueError("PPO does not accumulate gradients: a smaller minibatch_size is its way to save memory "
                             f"(got accumulation_steps={cfg.optim.accumulation_steps})")

    # -- rollout ---------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts) -> Rollout:
        """One answer to each prompt from the current policy, with everything the update needs:
        its log-probabilities (policy and reference), values, the reward model's score and the
        labeler's gold verdict. Every token is drawn with its own uniform from one generator
        seeded by the step (`generate.draw_tokens`), so on several processes each rank samples and
        scores its share of the prompts and the shares are gathered into the rollout one process
        samples (up to float rounding), whatever the number of processes."""
        cfg, tok = self.cfg, self.tokenizer
        self.policy.eval()
        instructions = [e.instruction for e in prompts]
        seeded = torch.Generator().manual_seed(self.seed * 100003 + self.n_steps)
        uniforms = torch.rand(len(prompts), cfg.max_new_tokens, generator=seeded)
        mine = shard(list(range(len(prompts))))
        share = [prompts[i] for i in mine]
        ep = sample_grouped_episodes(self.policy.lm, tok, [instructions[i] for i in mine], 1, cfg.max_new_tokens,
                                     cfg.temperature, uniforms=uniforms[mine],
                                     width=prompt_width(tok, instructions) if world_size() > 1 else None,
                                     synced=world_size() > 1)
        ep = widen_responses(ep, int(all_reduce_max(ep["responses"].shape[1])), tok.pad_token_id)
        with mixed_precision(cfg.optim, self.device):  # as in the update: the ratio starts at 1
            logprobs, entropy, values = self.policy.logprobs_and_values(
                ep["sequences"], ep["attention_mask"], ep["position_ids"], ep["responses"], cfg.temperature,
                cfg.logprob_chunk)
            ref_logprobs = self.reference_logprobs(ep)
        values = values.float() * ep["mask"]
        texts, _ = decode_responses(tok, ep["responses"])  # the same text the labeler and the reward model judge
        finished = ep["finished"]
        rm_scores = self.reward_model.score([e.instruction for e in share], texts, finished.tolist()).to(self.device)
        scores = rm_scores - cfg.missing_eos_penalty * (~finished).float()
        judgements = [self.labeler.judge(e, t, bool(f)) for e, t, f in zip(share, texts, finished)]
        gold = torch.tensor([j.gold for j in judgements])
        whole = gather_shares  # the shares, back in the prompts' order (one process: as they are)
        return Rollout(prompts, whole(ep["sequences"]), whole(ep["attention_mask"]), ep["prompt_len"],
                       whole(ep["mask"].float()), whole(finished), gather_texts(texts), whole(logprobs),
                       whole(ref_logprobs), whole(values), whole(scores), whole(rm_scores), whole(gold),
                       whole(entropy), gather_texts([j.category for j in judgements]))

    def reference_logprobs(self, episodes: dict) -> torch.Tensor:
        """log pi_ref(y_t | ...) of the sampled tokens: the SFT model's, or with LoRA the policy's
        with its adapters switched off (the same weights before any update)."""
        cfg = self.cfg
        if self.ref_policy is not None:
            return episode_logprobs(self.ref_policy, episodes, cfg.temperature, cfg.logprob_chunk)
        with adapters_disabled(self.policy.lm):
            return episode_logprobs(self.policy.lm, episodes, cfg.temperature, cfg.logprob_chunk)

    # -- update ----------------------------------------------------------------------------
    def step(self, prompts) -> dict:
        cfg = self.cfg
        started = time.perf_counter()
        ro = self.rollout(prompts)
        mask = ro.mask
        kl = kl_penalty(ro.logprobs, ro.ref_logprobs, cfg.kl_estimator) * mask
        rewards = per_token_rewards(ro.scores, kl, mask, self.kl_ctl.value)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
        explained = explained_variance(ro.values, returns, mask)  # how much of the returns the critic foresaw
        advantages = masked_whiten(advantages, mask)

        self.policy.train()
        if cfg.optim.gradient_checkpointing:  # for the updates only: generation needs its cache
            self.policy.lm.activation_checkpointing_enable()
        n, world = len(prompts), world_size()
        stats = {"policy_loss": [], "value_loss": [], "clip_frac": [], "approx_kl": []}
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=self.generator).tolist()
            for start in range(0, n, cfg.minibatch_size):
                # on several processes every rank holds the whole rollout and takes its share of each minibatch
                idx = torch.tensor(shard(order[start: start + cfg.minibatch_size]), device=self.device)
                with mixed_precision(cfg.optim, self.device):
                    logprobs, _, values = self.policy.logprobs_and_values(
                        ro.sequences[idx], ro.attention_mask[idx], position_ids_from(ro.attention_mask[idx]),
                        ro.sequences[idx, ro.prompt_len:], cfg.temperature, cfg.logprob_chunk)
                values = values.float()
                m = mask[idx]
                pg_loss, pg_stats = clipped_policy_loss(logprobs, ro.logprobs[idx], advantages[idx], m, cfg.cliprange)
                vf_loss = clipped_value_loss(values, ro.values[idx], returns[idx], m, cfg.cliprange_value)
                # each share counts by its response tokens (both losses are means over them); 1 in one process
                share = m.sum().item() / all_reduce_sum(m.sum().item()) if world > 1 else 1.0
                loss = (pg_loss + cfg.vf_coef * vf_loss) * share
                if cfg.ptx_coef > 0:  # the same demonstrations on every rank: each adds 1/N of their loss
                    batch = {k: v.to(self.device) for k, v in self.ptx_data.next_batch(self.generator).items()}
                    with mixed_precision(cfg.optim, self.device):
                        ptx_loss = batch_loss(self.policy.lm, batch, cfg.logprob_chunk)[0]
                    loss = loss + cfg.ptx_coef * ptx_loss / world
                    stats.setdefault("ptx_loss", []).append(ptx_loss.item())
                if not torch.isfinite(loss):
                    raise PPODivergence(f"PPO loss became {loss.item()} at step {self.n_steps + 1}; lower the "
                                        f"learning rate (now {cfg.optim.lr}) or raise the KL coefficient")
                optimizer_step(self.policy, self.optimizer, loss, cfg.optim.grad_clip)
                stats["policy_loss"].append(all_reduce_sum(pg_loss.item() * share))
                stats["value_loss"].append(all_reduce_sum(vf_loss.item() * share))
                stats["clip_frac"].append(all_reduce_sum(pg_stats["clip_frac"] * share))
                stats["approx_kl"].append(all_reduce_sum(pg_stats["approx_kl"] * share))
        if cfg.optim.gradient_checkpointing:
            self.policy.lm.activation_checkpointing_disable()
        self.policy.eval()

        seq_kl = kl.sum(1).mean().item()  # the estimator in use, summed over tokens, mean over episodes
        seq_kl_k1 = ((ro.logprobs - ro.ref_logprobs) * mask).sum(1).mean().item()
        seq_kl_k3 = (kl_penalty(ro.logprobs, ro.ref_logprobs, "k3") * mask).sum(1).mean().item()  # a monitor
        if not math.isfinite(seq_kl) or seq_kl > cfg.kl_max:
            raise PPODivergence(f"KL to the SFT model reached {seq_kl:.1f} nats at step {self.n_steps + 1} (limit "
                                f"{cfg.kl_max}): the policy has run away from the reference. Raise kl_coef "
                                f"(now {self.kl_ctl.value:.3g}) or lower lr (now {cfg.optim.lr}).")
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(seq_kl, n)
        self.n_steps += 1
        mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
        return {
            "step": self.n_steps,
            "rm_score": ro.rm_scores.mean().item(),
            "gold_score": ro.gold.mean().item(),
            "kl": seq_kl,
            "kl_k1": seq_kl_k1,
            "kl_k3": seq_kl_k3,
            "kl_coef": kl_coef,
            "non_score_reward": (-kl_coef * kl).sum(1).mean().item(),
            "entropy": masked_mean(ro.entropy, mask).item(),
            "response_length": mask.sum(1).mean().item(),
            "finished_rate": ro.finished.float().mean().item(),
            "policy_loss": mean(stats["policy_loss"]),
            "value_loss": mean(stats["value_loss"]),
            "explained_variance": explained,
            "clip_frac": mean(stats["clip_frac"]),
            "approx_kl": mean(stats["approx_kl"]),
            "ptx_loss": mean(stats.get("ptx_loss", [])),
            "seconds": time.perf_counter() - started,
            "categories": category_counts(ro.prompts, ro.categories),
        }


# ---------------------------------------------------------------------------------------
# A whole PPO run: steps on random batches of prompts, resumable
# ---------------------------------------------------------------------------------------
def train_ppo(trainer: PPOTrainer, prompts: list, steps: int, batch_size: int, seed: int = 0,
              progress: bool = True, callback=None, desc: str = "ppo", resume_dir: Path | None = None,
              save_every: int = 10, refresh=None, refresh_at: tuple[int, ...] = ()) -> PPOLog:
    """`steps` PPO steps on batches drawn from `prompts`; callback(step, row) after each
    (live plots). After each step in `refresh_at`, `refresh(trainer, round)` may replace the
    reward model (iterated RLHF). With `resume_dir`, a resume point is written every
    `save_every` steps and picked up by the next call: an interrupted run continues where it
    stopped and ends with the same weights as an uninterrupted one."""
    rng = random.Random(seed)
    log, started = PPOLog(), time.perf_counter()
    state = (load_resume_point(resume_dir, trainer.policy, trainer.optimizer, trainer.generator)
             if resume_dir is not None else None)
    if state is not None:
        trainer.n_steps, trainer.kl_ctl.value = state["n_steps"], state["kl_coef"]
        version, internal, gauss = state["rng_state"]
        rng.setstate((version, tuple(internal), gauss))
        log = PPOLog([r["step"] for r in state["rows"]], state["rows"], state.get("seconds", 0.0))
        for r, at in enumerate(refresh_at, start=2):  # the reward models of rounds already reached (cached)
            if refresh is not None and trainer.n_steps >= at:
                refresh(trainer, r)
    bar = tqdm(total=steps, initial=len(log.rows), desc=desc, disable=not progress, leave=True)
    while trainer.n_steps < steps:
        row = trainer.step(rng.sample(prompts, min(batch_size, len(prompts))))
        log.steps.append(row["step"])
        log.rows.append(row)
        bar.set_postfix(rm=f"{row['rm_score']:.2f}", gold=f"{row['gold_score']:.2f}", kl=f"{row['kl']:.2f}")
        bar.update(1)
        if refresh is not None and row["step"] in refresh_at:
            refresh(trainer, refresh_at.index(row["step"]) + 2)
        if callback is not None:  # first, so that what it adds to the row goes into the resume point
            callback(row["step"], row)
        if resume_dir is not None and row["step"] % save_every == 0 and row["step"] < steps:
            version, internal, gauss = rng.getstate()
            save_resume_point(Path(resume_dir), trainer.policy, trainer.optimizer, trainer.generator,
                              {"n_steps": trainer.n_steps, "kl_coef": trainer.kl_ctl.value, "rows": log.rows,
                               "rng_state": [version, list(internal), gauss],
                               "seconds": log.resumed_seconds + time.perf_counter() - started})
    bar.close()
    gather_weights(trainer.policy)  # whole again (EMBIGGEN_SHARD=weights): to save, evaluate, go on
    return log
