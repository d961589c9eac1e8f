"""Preference optimisation from thumbs up and down: KTO.

DPO needs pairs: two answers to one prompt and which is better. Much feedback is not like that:
a user clicks thumbs-up or thumbs-down on the one answer they saw. Ethayarajh et al. (2024,
"KTO: Model Alignment as Prospect Theoretic Optimization", https://arxiv.org/abs/2402.01306)
learn from such single judgements. Keep DPO's implicit reward, r(x, y) = log pi(y|x) - log
pi_ref(y|x), and compare each answer's reward not with another answer's but with a reference
point z: how far the policy has moved from the reference on answers in general, the KL between
them, estimated on answers that do not belong to their prompts and held fixed (no gradient),
clamped at 0. A desirable answer should gain more than that, an undesirable one lose more:

    L_KTO = lambda_D (1 - sigma(beta (r(x, y) - z)))   for a thumbs-up answer,
            lambda_U (1 - sigma(beta (z - r(x, y))))   for a thumbs-down answer,

    z = max(0, mean over the batch of log pi(y'|x) - log pi_ref(y'|x)),  y' answering another prompt.

The sigmoid saturates on both sides (the "value function" of prospect theory), so an answer far on
the right side of z stops pulling. Here each judged answer is paired once, at random, with an
answer to another prompt; the reference's log-probabilities of both are computed once, before
training, as DPO's are; each step the policy's log-probabilities of the mismatched answers give z.

The judgements are the labeler's: every answer of the preference collection (the same prompts
and answers DPO's pairs are made of), judged on its own, thumbs-up when its gold score is above 0,
flipped with the labeler's noise rate (`judged_answers`). The paper advises weighting the two
kinds so that lambda_D n_D / (lambda_U n_U) is between 1 and 4/3 when one is rarer;
`KTOConfig.balance` sets it to 1.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from embiggen.judging.labeler import Labeler
from embiggen.lm.distributed import all_reduce_sum, shard, world_size
from embiggen.lm.training import TrainLog, mixed_precision, train_loop
from embiggen.methods.dpo import encode_response, pack_segments, sequence_logprobs
from embiggen.methods.ppo import disable_dropout
from embiggen.methods.sft import pad_batch
from embiggen.presets import KTOConfig
from embiggen.utils import pick_device


@dataclass
class Judged:
    """One answer with the labeler's thumbs up (True) or down."""
    prompt: str
    answer: str
    desirable: bool
    kind: str
    finished: bool = True


def judged_answers(pairs, examples, labeler: Labeler, seed: int = 0) -> list[Judged]:
    """Every distinct answer of `pairs` (preference pairs, `judging.preferences.Comparison`),
    judged on its own by `labeler`: thumbs-up when its gold score is above 0 (right, or an honest
    hedge, or a refusal of harm), each verdict flipped with probability labeler.noise. `examples`
    are the prompts' TaskExamples, by instruction."""
    by_prompt = {e.instruction: e for e in examples}
    rng, seen, out = random.Random(seed), set(), []
    for p in pairs:
        for answer, finished in ((p.chosen, p.chosen_finished), (p.rejected, p.rejected_finished)):
            if (p.prompt, answer) in seen:
                continue
            seen.add((p.prompt, answer))
            example = by_prompt.get(p.prompt)
            if example is None:
                raise KeyError(f"no example for the prompt {p.prompt!r}")
            up = labeler.judge(example, answer, finished).gold > 0
            if labeler.noise > 0 and rng.random() < labeler.noise:
                up = not up
            out.append(Judged(p.prompt, answer, up, p.kind, finished))
    return out


def kto_loss(logratio: torch.Tensor, desirable: torch.Tensor, z: torch.Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """The KTO loss of a batch of judged answers, from each answer's log pi / pi_ref, whether it
    is desirable, and the reference point z (detached, >= 0)."""
    up = desirable_weight * (1 - torch.sigmoid(beta * (logratio - z)))
    down = undesirable_weight * (1 - torch.sigmoid(beta * (z - logratio)))
    return torch.where(desirable, up, down).mean()


def mismatched(n: int, seed: int) -> list[int]:
    """For each of n answers another one (a derangement drawn with `seed`: nobody gets itself):
    the KL estimate's answer that, mostly, does not belong to the prompt (the K answers of one
    prompt are few among thousands)."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    partner = [0] * n
    for a, b in zip(order, order[1:] + order[:1]):  # a cycle through a random order: nobody gets itself
        partner[a] = b
    return partner if n > 1 else list(range(n))


class KTOData:
    """Encoded judged answers, each with a mismatched answer (its prompt, another's answer), the
    reference's log-probabilities of both, and how to draw a batch."""

    def __init__(self, tokenizer, judged: list[Judged], cfg: KTOConfig, ref_model, device, seed: int = 0):
        self.pad, self.cfg = tokenizer.pad_token_id, cfg
        self.own = [encode_response(tokenizer, j.prompt, j.answer, j.finished, cfg.max_length) for j in judged]
        self.partner = mismatched(len(judged), seed)
        self.other = [encode_response(tokenizer, judged[i].prompt, judged[k].answer, judged[k].finished,
                                      cfg.max_length) for i, k in enumerate(self.partner)]
        self.desirable = torch.tensor([j.desirable for j in judged], dtype=torch.bool)
        self.ref_own, self.ref_other = (self._reference(ref_model, seqs, device) for seqs in (self.own, self.other))

    @torch.no_grad()
    def _reference(self, ref_model, sequences, device, batch_size: int = 64) -> torch.Tensor:
        ref_model.eval()
        out = [sequence_logprobs(ref_model, {k: v.to(device) for k, v in pad_batch(sequences[i: i + batch_size],
                                                                                      self.pad).items()},
                                 self.cfg.logprob_chunk)[0].cpu() for i in range(0, len(sequences), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def rows(self, sequences: list[dict]) -> dict:
        if not self.cfg.packing:
            return pad_batch(sequences, self.pad)
        segments = [{**s, "position_ids": list(range(len(s["input_ids"]))), "sequence": [i] * len(s["input_ids"])}
                    for i, s in enumerate(sequences)]
        return pack_segments(segments, self.pad, self.cfg.max_length)

    def batch(self, idx: list[int]) -> dict:
        """The answers `idx` and then their mismatched answers, in one batch of rows."""
        rows = self.rows([self.own[i] for i in idx] + [self.other[i] for i in idx])
        return {**rows, "desirable": self.desirable[idx], "ref_own": self.ref_own[idx],
                "ref_other": self.ref_other[idx]}


def kto_batch_loss(model, batch: dict, cfg: KTOConfig):
    """(loss, response tokens, what to log) for one batch of judged answers. z is the batch's mean
    log pi / pi_ref of the mismatched answers (over every rank's share), clamped at 0, detached."""
    logp, n_tokens = sequence_logprobs(model, batch, cfg.logprob_chunk)
    half = logp.shape[0] // 2
    logratio = logp[:half] - batch["ref_own"]
    other = (logp[half:] - batch["ref_other"]).detach()
    z = torch.tensor(max(0.0, all_reduce_sum(other.sum().item()) / max(1.0, all_reduce_sum(len(other)))),
                     device=logp.device)
    loss = kto_loss(logratio, batch["desirable"], z, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
    up, down = batch["desirable"], ~batch["desirable"]
    reward = cfg.beta * logratio.detach()
    stats = {"kl_estimate": z.item(),
             "reward_desirable": reward[up].mean().item() if up.any() else float("nan"),
             "reward_undesirable": reward[down].mean().item() if down.any() else float("nan")}
    return loss, n_tokens[:half].sum(), stats


@torch.no_grad()
def evaluate_judged(model, data: KTOData, cfg: KTOConfig, batch_size: int = 64) -> dict:
    """The KTO loss and how often the implicit reward ranks a thumbs-up answer above z and a
    thumbs-down one below it, over every answer of `data`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logratios, others = [], []
    for i in range(0, len(data.own), batch_size):
        batch = {k: v.to(device) for k, v in data.batch(list(range(i, min(i + batch_size, len(data.own))))).items()}
        logp, _ = sequence_logprobs(model, batch, cfg.logprob_chunk)
        half = logp.shape[0] // 2
        logratios.append(logp[:half] - batch["ref_own"])
        others.append(logp[half:] - batch["ref_other"])
    model.train(was_training)
    logratio, desirable = torch.cat(logratios), data.desirable.to(device)
    z = torch.cat(others).mean().clamp(min=0)
    right = torch.where(desirable, logratio > z, logratio < z).float().mean()
    return {"loss": kto_loss(logratio, desirable, z, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight).item(),
            "judged_accuracy": right.item(), "kl_estimate": z.item()}


def train_kto(model, ref_model, tokenizer, train_judged: list[Judged], eval_judged: list[Judged], cfg: KTOConfig,
              device=None, seed: int = 0, progress: bool = True, resume_dir: Path | None = None,
              desc: str = "kto") -> TrainLog:
    """Fine-tune `model` (a copy of the SFT model) with the KTO loss on judged answers, against
    `ref_model` (the SFT model, whose log-probabilities are computed once). The log holds the
    held-out KTO loss as `val_loss`, and per step the KL estimate z and the implicit rewards of
    thumbs-up and thumbs-down answers. With cfg.balance, lambda_D is scaled so that both kinds
    of judgement weigh the same in total (here thumbs-down answers outnumber thumbs-up ones)."""
    device = device or pick_device()
    if world_size() > 1 and cfg.batch_size < world_size():
        raise ValueError(f"a batch of {cfg.batch_size} cannot be split over {world_size()} processes")
    model.to(device)
    disable_dropout(model)
    ups = sum(j.desirable for j in train_judged)
    if cfg.balance and 0 < ups < len(train_judged):  # lambda_D n_D = lambda_U n_U: the rarer kind weighs as much
        cfg = replace(cfg, desirable_weight=cfg.desirable_weight * (len(train_judged) - ups) / ups)
    with mixed_precision(cfg.optim, device):
        disable_dropout(ref_model.to(device))
        train = KTOData(tokenizer, train_judged, cfg, ref_model, device, seed)
        held = KTOData(tokenizer, eval_judged, cfg, ref_model, device, seed + 1)
    latest: dict = {}

    def next_batch(generator):  # on several processes, this rank's answers of the batch
        return train.batch(shard(torch.randint(len(train.own), (cfg.batch_size,), generator=generator).tolist()))

    def held_out_loss(m):
        with mixed_precision(cfg.optim, device):
            latest.update(evaluate_judged(m, held, cfg))
        return latest["loss"]

    def record(step, log):
        log.metrics.setdefault("val_judged_accuracy", []).append(latest["judged_accuracy"])

    return train_loop(model, next_batch, lambda m, batch: kto_batch_loss(m, batch, cfg), cfg,
                      val_loss_fn=held_out_loss if held.own else None, device=device, seed=seed,
                      callback=record if held.own else None, progress=progress, resume_dir=resume_dir, desc=desc,
                      units=lambda batch: len(batch["desirable"]))  # KTO's loss is a mean over answers
