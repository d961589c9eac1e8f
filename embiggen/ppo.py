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
never negative, lower variance.) PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347)
then treats each response token as an action:

* a value head V(s_t) on the policy's last hidden state estimates the return;
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

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .generate import decode_responses
from .presets import PPOConfig, Preset, get_preset
from .splits import SPLITS_VERSION, data_splits
from .utils import cache_root, config_key, pick_device, set_seed

PPO_VERSION = 2


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
    (unbiased, never negative, lower variance; http://joschu.net/blog/kl-approx.html)."""
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
    """A causal LM plus a scalar value head on its last hidden state (one shared trunk)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, response_len: int):
        """Logits and values at the `response_len` positions that predict the response tokens
        (the language-model head is not wasted on the prompt)."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=True, use_cache=False, logits_to_keep=response_len + 1)
        values = self.value_head(out.hidden_states[-1][:, -(response_len + 1):-1]).squeeze(-1)
        return out.logits[:, :-1], values


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop", "embd_pdrop"):
        if config is not None and hasattr(config, name):
            setattr(config, name, 0.0)


def position_ids_from(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def response_logprobs(logits: torch.Tensor, responses: torch.Tensor,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_t | x, y_<t) of the response tokens under logits / temperature, and the
    entropy of that distribution at each response position. `logits[:, t]` are the logits
    that predict `responses[:, t]` (the positions just before each response token)."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logprobs = logp_all.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


def response_mask(responses: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1 on response tokens up to and including the first EOS; and whether each response ended."""
    is_eos = responses == eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).long(), is_eos.any(1)


@torch.no_grad()
def sample_episodes(lm, tokenizer, instructions: list[str], max_new_tokens: int, temperature: float) -> dict:
    """Sample one response per instruction (chat template, left padding, stop at EOS) and
    return everything the log-prob passes need: sequences, attention mask and position ids
    over prompt + response, the response tokens, their mask and whether each ended."""
    from .sft import chat_prompt

    tokenizer.padding_side = "left"
    device = next(lm.parameters()).device
    enc = tokenizer([chat_prompt(tokenizer, x) for x in instructions], return_tensors="pt", padding=True,
                    add_special_tokens=False).to(device)
    prompt_len = enc["input_ids"].shape[1]
    sequences = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0,
                            top_p=1.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    responses = sequences[:, prompt_len:]
    mask, finished = response_mask(responses, tokenizer.eos_token_id)
    attention_mask = torch.cat([enc["attention_mask"], mask], dim=1)
    return {"sequences": sequences, "attention_mask": attention_mask, "position_ids": position_ids_from(attention_mask),
            "prompt_len": prompt_len, "responses": responses, "mask": mask, "finished": finished}


@torch.no_grad()
def episode_logprobs(lm, episodes: dict, temperature: float) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of the sampled response tokens under a (frozen) language model."""
    n = episodes["responses"].shape[1]
    logits = lm(input_ids=episodes["sequences"], attention_mask=episodes["attention_mask"],
                position_ids=episodes["position_ids"], use_cache=False, logits_to_keep=n + 1).logits[:, :-1]
    return response_logprobs(logits, episodes["responses"], temperature)[0]


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


@dataclass
class PPOLog:
    steps: list[int] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    def series(self, key: str) -> list[float]:
        return [r[key] for r in self.rows]


class PPOTrainer:
    """Holds the policy (with value head), the frozen reference, the reward model and the
    labeler; `step(prompts)` does one rollout and one PPO update and returns its statistics."""

    def __init__(self, policy_lm, ref_lm, tokenizer, reward_model, labeler, cfg: PPOConfig, device=None,
                 seed: int = 0, ptx_data=None):
        from .sft import chat_prompt

        self.cfg, self.tokenizer, self.reward_model, self.labeler = cfg, tokenizer, reward_model, labeler
        self.device = device or pick_device()
        self.chat_prompt = lambda text: chat_prompt(tokenizer, text)
        disable_dropout(policy_lm)
        disable_dropout(ref_lm)
        self.policy = PolicyWithValueHead(policy_lm).to(self.device)
        self.ref_policy = ref_lm.to(self.device).eval()
        for p in self.ref_policy.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.kl_ctl = kl_controller(cfg)
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.n_steps = 0
        self.ptx_data = ptx_data  # an embiggen.sft.SFTData of demonstrations, for PPO-ptx
        if cfg.ptx_coef > 0 and ptx_data is None:
            raise ValueError("ptx_coef > 0 needs ptx_data (demonstrations to keep the language-model loss on)")

    # -- rollout ---------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts) -> Rollout:
        cfg, tok = self.cfg, self.tokenizer
        self.policy.eval()
        torch.manual_seed(self.seed * 100003 + self.n_steps)
        ep = sample_episodes(self.policy.lm, tok, [e.instruction for e in prompts], cfg.max_new_tokens, cfg.temperature)
        sequences, attention_mask, responses, mask = ep["sequences"], ep["attention_mask"], ep["responses"], ep["mask"]
        finished, prompt_len, n = ep["finished"], ep["prompt_len"], ep["responses"].shape[1]
        logits, values = self.policy(sequences, attention_mask, ep["position_ids"], n)
        logprobs, entropy = response_logprobs(logits, responses, cfg.temperature)
        ref_logprobs = episode_logprobs(self.ref_policy, ep, cfg.temperature)
        texts, _ = decode_responses(tok, responses)  # the same text the labeler and the reward model judge
        instructions = [e.instruction for e in prompts]
        rm_scores = self.reward_model.score(instructions, texts, finished.tolist()).to(self.device)
        scores = rm_scores - cfg.missing_eos_penalty * (~finished).float()
        gold = torch.tensor([self.labeler.gold_score(e, t, bool(f)) for e, t, f in zip(prompts, texts, finished)])
        return Rollout(prompts, sequences, attention_mask, prompt_len, mask.float(), finished, texts, logprobs,
                       ref_logprobs, values * mask, scores, rm_scores, gold, entropy)

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
        advantages = masked_whiten(advantages, mask)

        self.policy.train()
        n = len(prompts)
        stats = {"policy_loss": [], "value_loss": [], "clip_frac": [], "approx_kl": []}
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=self.generator).tolist()
            for start in range(0, n, cfg.minibatch_size):
                idx = torch.tensor(order[start: start + cfg.minibatch_size], device=self.device)
                n_resp = ro.sequences.shape[1] - ro.prompt_len
                logits, values = self.policy(ro.sequences[idx], ro.attention_mask[idx],
                                             position_ids_from(ro.attention_mask[idx]), n_resp)
                logprobs, _ = response_logprobs(logits, ro.sequences[idx, ro.prompt_len:], cfg.temperature)
                m = mask[idx]
                pg_loss, pg_stats = clipped_policy_loss(logprobs, ro.logprobs[idx], advantages[idx], m, cfg.cliprange)
                vf_loss = clipped_value_loss(values, ro.values[idx], returns[idx], m, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                if cfg.ptx_coef > 0:
                    from .sft import batch_loss

                    batch = {k: v.to(self.device) for k, v in self.ptx_data.next_batch(self.generator).items()}
                    ptx_loss, _ = batch_loss(self.policy.lm, batch)
                    loss = loss + cfg.ptx_coef * ptx_loss
                    stats.setdefault("ptx_loss", []).append(ptx_loss.item())
                if not torch.isfinite(loss):
                    raise PPODivergence(f"PPO loss became {loss.item()} at step {self.n_steps + 1}; lower the "
                                        f"learning rate (now {cfg.lr}) or raise the KL coefficient")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
                self.optimizer.step()
                stats["policy_loss"].append(pg_loss.item())
                stats["value_loss"].append(vf_loss.item())
                stats["clip_frac"].append(pg_stats["clip_frac"])
                stats["approx_kl"].append(pg_stats["approx_kl"])
        self.policy.eval()

        seq_kl = kl.sum(1).mean().item()  # the estimator in use, summed over tokens, mean over episodes
        seq_kl_k1 = ((ro.logprobs - ro.ref_logprobs) * mask).sum(1).mean().item()
        if not math.isfinite(seq_kl) or seq_kl > cfg.kl_max:
            raise PPODivergence(f"KL to the SFT model reached {seq_kl:.1f} nats at step {self.n_steps + 1} (limit "
                                f"{cfg.kl_max}): the policy has run away from the reference. Raise kl_coef "
                                f"(now {self.kl_ctl.value:.3g}) or lower lr (now {cfg.lr}).")
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
            "kl_coef": kl_coef,
            "non_score_reward": (-kl_coef * kl).sum(1).mean().item(),
            "entropy": masked_mean(ro.entropy, mask).item(),
            "response_length": mask.sum(1).mean().item(),
            "finished_rate": ro.finished.float().mean().item(),
            "policy_loss": mean(stats["policy_loss"]),
            "value_loss": mean(stats["value_loss"]),
            "clip_frac": mean(stats["clip_frac"]),
            "approx_kl": mean(stats["approx_kl"]),
            "ptx_loss": mean(stats.get("ptx_loss", [])),
            "seconds": time.perf_counter() - started,
        }


# ---------------------------------------------------------------------------------------
# A whole PPO run, cached like every other stage
# ---------------------------------------------------------------------------------------
@dataclass
class PPOModel:
    model: object        # the tuned causal LM (value head dropped)
    tokenizer: object
    world: object
    log: PPOLog
    info: dict
    path: Path


def ppo_cache_dir(preset: Preset, reward_path: Path, cfg: PPOConfig) -> Path:
    key = config_key("ppo", PPO_VERSION, SPLITS_VERSION, reward_path.name, asdict(cfg))
    return cache_root() / "ppo" / f"{preset.name}-seed{preset.seed}-beta{cfg.kl_coef:g}-{key}"


def save_resume_point(folder: Path, trainer: PPOTrainer, rng: random.Random, log: PPOLog) -> None:
    """Everything needed to continue an interrupted PPO run — policy with value head, Adam's
    state, the KL coefficient, random states and the log — as safetensors plus JSON."""
    import json

    from safetensors.torch import save_file

    from .training import optimizer_state_tensors
    from .utils import atomic_dir

    with atomic_dir(folder) as tmp:
        state = trainer.policy.state_dict()
        if getattr(trainer.policy.lm.config, "tie_word_embeddings", False):
            state = {k: v for k, v in state.items() if k != "lm.lm_head.weight"}
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / "policy.safetensors"))
        opt = {**optimizer_state_tensors(trainer.optimizer), "generator_state": trainer.generator.get_state()}
        save_file(opt, str(tmp / "optimizer.safetensors"))
        version, internal, gauss = rng.getstate()
        (tmp / "state.json").write_text(json.dumps({
            "n_steps": trainer.n_steps, "kl_coef": trainer.kl_ctl.value, "rows": log.rows,
            "rng_state": [version, list(internal), gauss]}))


def load_resume_point(folder: Path, trainer: PPOTrainer, rng: random.Random) -> PPOLog:
    import json

    from safetensors.torch import load_file

    from .training import restore_optimizer_state

    state = json.loads((folder / "state.json").read_text())
    trainer.policy.load_state_dict(load_file(str(folder / "policy.safetensors")), strict=False)
    if getattr(trainer.policy.lm.config, "tie_word_embeddings", False):
        trainer.policy.lm.tie_weights()
    opt = load_file(str(folder / "optimizer.safetensors"))
    trainer.generator.set_state(opt.pop("generator_state"))
    restore_optimizer_state(trainer.optimizer, opt)
    trainer.n_steps, trainer.kl_ctl.value = state["n_steps"], state["kl_coef"]
    version, internal, gauss = state["rng_state"]
    rng.setstate((version, tuple(internal), gauss))
    return PPOLog([r["step"] for r in state["rows"]], state["rows"])


def train_ppo(trainer: PPOTrainer, prompts: list, steps: int, batch_size: int, seed: int = 0,
              progress: bool = True, callback=None, desc: str = "ppo", resume_dir: Path | None = None,
              save_every: int = 10, refresh=None, refresh_at: tuple[int, ...] = ()) -> PPOLog:
    """`steps` PPO steps on batches drawn from `prompts`; callback(step, row) after each
    (live plots). After each step in `refresh_at`, `refresh(trainer, round)` may replace the
    reward model (iterated RLHF). With `resume_dir`, a resume point is written every
    `save_every` steps and picked up by the next call: an interrupted run continues where it
    stopped and ends with the same weights as an uninterrupted one."""
    rng = random.Random(seed)
    log = PPOLog()
    if resume_dir is not None and (Path(resume_dir) / "state.json").exists():
        log = load_resume_point(Path(resume_dir), trainer, rng)
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
        if resume_dir is not None and row["step"] % save_every == 0 and row["step"] < steps:
            save_resume_point(Path(resume_dir), trainer, rng, log)
        if callback is not None:
            callback(row["step"], row)
    bar.close()
    return log


def build_trainer(preset: Preset, cfg: PPOConfig, sft_model, reward_model, device=None):
    """A PPOTrainer that starts from (and is anchored to) the SFT model, and its training prompts."""
    from transformers import AutoModelForCausalLM

    from .labeler import Labeler

    set_seed(preset.seed)
    policy = AutoModelForCausalLM.from_pretrained(sft_model.path, use_safetensors=True)
    ref = AutoModelForCausalLM.from_pretrained(sft_model.path, use_safetensors=True)
    splits = data_splits(preset)
    prompts = splits.ppo
    ptx_data = None
    if cfg.ptx_coef > 0:  # PPO-ptx: keep the language-model loss on the SFT demonstrations
        from dataclasses import replace

        from .sft import SFTData

        # task demonstrations only, none of them an evaluation prompt (see embiggen.splits)
        ptx_data = SFTData(sft_model.tokenizer, splits.ptx,
                           replace(preset.sft, batch_size=cfg.ptx_batch_size, replay_share=0.0))
    trainer = PPOTrainer(policy, ref, sft_model.tokenizer, reward_model, Labeler(), cfg, device=device,
                         seed=preset.seed, ptx_data=ptx_data)
    return trainer, prompts


def refreshed_reward_model(preset: Preset, cfg: PPOConfig, trainer: PPOTrainer, sft_model, first_rm, round_: int,
                           progress: bool = True):
    """Round `round_` of iterated RLHF: the labeler ranks K samples of the current policy on
    fresh prompts, and a reward model is trained from the SFT weights on every pair so far
    (the SFT samples' pairs plus each round's). Cached beside the first reward model."""
    from .labeler import Labeler
    from .model import is_cached, save_checkpoint
    from .preferences import collect_preferences
    from .reward import (_pairs_from_jsonl, _pairs_to_jsonl, fit_reward_model, labeler_for, load_pairs,
                         load_reward_model, pairwise_accuracy, preference_data)

    key = config_key("round", first_rm.path.name, asdict(cfg), round_)
    path = first_rm.path.parent / f"{first_rm.path.name}-round{round_}-{key}"
    if is_cached(path):
        trainer.reward_model = load_reward_model(path, trainer.device)
        return trainer.reward_model
    rcfg, splits = preset.reward, data_splits(preset)
    earlier = (_pairs_from_jsonl(trainer.reward_model.path / "train_pairs.jsonl")
               if (trainer.reward_model.path / "train_pairs.jsonl").exists() else load_pairs(first_rm, "train"))
    prompts, held_prompts = splits.refresh(round_), splits.refresh_eval(round_)
    sample = dict(k=rcfg.k, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    policy = trainer.policy.lm
    new = collect_preferences(policy, trainer.tokenizer, prompts, labeler_for(preset), seed=preset.seed + round_,
                              **sample)
    held = collect_preferences(policy, trainer.tokenizer, held_prompts, Labeler(), seed=preset.seed + 50 + round_,
                               **sample)
    pairs = earlier + new.pairs
    sft_data = preference_data(preset, sft_model, progress=False)  # cached: held-out pairs and samples of SFT
    # about one epoch over all pairs; normalised on the same SFT samples as the first reward model
    rm = fit_reward_model(preset, sft_model, pairs, sft_data["eval_pairs"], sft_data["norm_samples"], path,
                          steps=max(1, len(pairs) // rcfg.batch_size), progress=progress,
                          desc=f"reward model {preset.name} round {round_}")
    policy_eval = pairwise_accuracy(rm.model, rm.tokenizer, held.pairs)
    rm.info.update({"round": round_, "new_pairs": len(new.pairs), "policy_pairwise_accuracy": policy_eval["accuracy"],
                    "policy_per_type_accuracy": policy_eval["per_type"]})
    save_checkpoint(path, rm.model, rm.tokenizer, rm.info, rm.log,
                    extra_files={"train_pairs.jsonl": _pairs_to_jsonl(pairs),
                                 "eval_pairs.jsonl": _pairs_to_jsonl(held.pairs)})
    trainer.reward_model = rm
    return rm


def final_reward_model(tuned: PPOModel, first_rm):
    """The reward model a PPO run optimised in its last round (the first one if it ran one round)."""
    from .reward import load_reward_model

    name = tuned.info.get("final_reward_model", first_rm.path.name)
    if name == first_rm.path.name:
        return first_rm
    return load_reward_model(first_rm.path.parent / name, next(first_rm.model.parameters()).device)


def train_or_load_ppo(preset: str | Preset | None = None, kl_coef: float | None = None, steps: int | None = None,
                      lr: float | None = None, rounds: int | None = None, force: bool = False, progress: bool = True,
                      callback=None, device=None) -> PPOModel:
    """The PPO policy for `preset` (optionally with another KL coefficient, step count or
    learning rate, for the reward-hacking sweep): loaded from the cache, or trained from the
    cached SFT model against the cached reward model."""
    from .model import is_cached, load_checkpoint, resume_dir, save_checkpoint
    from .reward import train_or_load_reward
    from .sft import train_or_load_sft
    from .training import TrainLog

    preset = get_preset(preset)
    cfg = preset.ppo
    changes = {k: v for k, v in {"kl_coef": kl_coef, "steps": steps, "lr": lr, "rounds": rounds}.items()
               if v is not None}
    if changes:
        cfg = PPOConfig(**{**asdict(cfg), **changes})
    device = device or pick_device()
    sft_model = train_or_load_sft(preset, progress=progress, device=device)
    rm = train_or_load_reward(preset, progress=progress, device=device)
    path = ppo_cache_dir(preset, rm.path, cfg)
    if is_cached(path) and not force:
        model, tokenizer, info, _ = load_checkpoint(path, device)
        rows = info.pop("ppo_log")
        return PPOModel(model, tokenizer, sft_model.world, PPOLog([r["step"] for r in rows], rows), info, path)

    started = time.perf_counter()
    trainer, prompts = build_trainer(preset, cfg, sft_model, rm, device)
    refresh_at = tuple(cfg.steps * r // cfg.rounds for r in range(1, cfg.rounds))
    refresh = lambda t, r: refreshed_reward_model(preset, cfg, t, sft_model, rm, r, progress)  # noqa: E731
    log = train_ppo(trainer, prompts, cfg.steps, cfg.batch_size, seed=preset.seed, progress=progress,
                    callback=callback, desc=f"ppo {preset.name} beta={cfg.kl_coef:g}", resume_dir=resume_dir(path),
                    save_every=cfg.log_every, refresh=refresh, refresh_at=refresh_at)
    model = trainer.policy.lm.eval()
    info = {"preset": preset.name, "seed": preset.seed, "kl_coef": cfg.kl_coef, "steps": cfg.steps,
            "episodes": cfg.steps * cfg.batch_size, "train_seconds": round(time.perf_counter() - started, 2),
            "reward_model": rm.path.name, "final_reward_model": trainer.reward_model.path.name, "rounds": cfg.rounds,
            "refresh_at": list(refresh_at), "device": str(device)}
    save_checkpoint(path, model, sft_model.tokenizer, {**info, "ppo_log": log.rows}, TrainLog())
    return PPOModel(model, sft_model.tokenizer, sft_model.world, log, info, path)


@torch.no_grad()
def sample_with_kl(policy_lm, ref_lm, tokenizer, instructions: list[str], max_new_tokens: int = 32,
                   temperature: float = 1.0, seed: int = 0, batch_size: int = 64) -> dict:
    """One sampled response per instruction from pi (as in training), its text and whether it
    ended, and KL(pi || pi_ref) per response, estimated as in training: k1 summed over the
    response tokens — on any prompts, e.g. held-out ones. `kl` is the mean over responses."""
    torch.manual_seed(seed)
    policy_lm.eval()
    kls, texts, finished = [], [], []
    for i in range(0, len(instructions), batch_size):
        ep = sample_episodes(policy_lm, tokenizer, instructions[i: i + batch_size], max_new_tokens, temperature)
        log_ratio = episode_logprobs(policy_lm, ep, temperature) - episode_logprobs(ref_lm, ep, temperature)
        kls += (log_ratio * ep["mask"]).sum(1).tolist()
        t, f = decode_responses(tokenizer, ep["responses"])
        texts += t
        finished += f
    return {"kl": sum(kls) / max(1, len(kls)), "kls": kls, "texts": texts, "finished": finished}


def policy_kl(policy_lm, ref_lm, tokenizer, instructions: list[str], max_new_tokens: int = 32,
              temperature: float = 1.0, seed: int = 0, batch_size: int = 64) -> float:
    """KL(pi || pi_ref) per response on `instructions` (see `sample_with_kl`)."""
    return sample_with_kl(policy_lm, ref_lm, tokenizer, instructions, max_new_tokens, temperature, seed,
                          batch_size)["kl"]


def sampled_gold(labeler, prompts, sampled: dict) -> float:
    """Mean gold score of the sampled (T = 1) responses of `sample_with_kl`: the policy whose
    KL was measured, judged on the answers that KL was measured on."""
    scores = [labeler.gold_score(e, t, f) for e, t, f in zip(prompts, sampled["texts"], sampled["finished"])]
    return sum(scores) / max(1, len(scores))


def kl_sweep(preset: str | Preset | None = None, progress: bool = True, device=None) -> list[dict]:
    """Reward hacking made visible: one PPO run per KL coefficient in preset.ppo.kl_sweep, each
    against the first reward model only (one round, learning rate preset.ppo.sweep_lr; cached),
    with its training log and its gold and reward-model scores on held-out prompts."""
    from .evaluate import judge_model
    from .labeler import Labeler
    from .reward import train_or_load_reward
    from .sft import train_or_load_sft

    preset = get_preset(preset)
    rm = train_or_load_reward(preset, progress=progress, device=device)
    sft_model = train_or_load_sft(preset, progress=progress, device=device)
    prompts, labeler = data_splits(preset).ppo_eval, Labeler()
    runs = []
    for beta in preset.ppo.kl_sweep:
        tuned = train_or_load_ppo(preset, kl_coef=beta, steps=preset.ppo.sweep_steps, lr=preset.ppo.sweep_lr,
                                  rounds=1, progress=progress, device=device)
        judged = judge_model(tuned.model, tuned.tokenizer, prompts, labeler, rm, preset.ppo.max_new_tokens)
        examples = [judged["rows"][i] for i in range(0, len(judged["rows"]), max(1, len(judged["rows"]) // 8))]
        sampled = sample_with_kl(tuned.model, sft_model.model, tuned.tokenizer, [e.instruction for e in prompts],
                                 preset.ppo.max_new_tokens, preset.ppo.temperature, seed=preset.seed)
        runs.append({"kl_coef": beta, "lr": preset.ppo.sweep_lr, "rows": tuned.log.rows, "kl": sampled["kl"],
                     "gold": judged["gold_score"], "gold_sampled": sampled_gold(labeler, prompts, sampled),
                     "rm_score": judged["rm_score"], "honest_rate": judged["honest_rate"],
                     "over_refusal_rate": judged["over_refusal_rate"], "task_correct_rate": judged["task_correct_rate"],
                     "examples": examples})
    return runs
