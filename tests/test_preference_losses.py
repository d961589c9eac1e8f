"""DPO's relatives — SimPO, ORPO, KTO — each against a plain reference computation written out
here, and each trained for a few steps on a tiny model."""

import math
from dataclasses import replace

import pytest
import torch

from embiggen.judging.labeler import Labeler
from embiggen.judging.preferences import Comparison
from embiggen.methods.kto import judged_answers, kto_loss, mismatched, train_kto
from embiggen.methods.orpo import orpo_loss, train_orpo
from embiggen.methods.simpo import simpo_loss, train_simpo
from embiggen.presets import KTOConfig, ORPOConfig, OptimConfig, SimPOConfig


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logps(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 9, (n,), generator=g)
    return -torch.rand(n, generator=g) * tokens * 2, tokens  # summed log-probs, < 0, and token counts


def test_simpo_loss_matches_the_written_out_formula():
    (cw, nw), (cr, nr) = logps(6, 0), logps(6, 1)
    beta, gamma = 2.0, 1.0
    loss, rewards = simpo_loss(cw, cr, nw, nr, beta, gamma)
    reference = sum(-math.log(sigmoid(beta * a / m - beta * b / k - gamma))
                    for a, m, b, k in zip(cw.tolist(), nw.tolist(), cr.tolist(), nr.tolist())) / 6
    assert loss.item() == pytest.approx(reference, abs=1e-6)
    assert rewards["chosen"][0].item() == pytest.approx(beta * cw[0].item() / nw[0].item(), abs=1e-6)


def test_orpo_loss_matches_the_written_out_formula():
    (cw, nw), (cr, nr) = logps(5, 2), logps(5, 3)
    lam = 0.3
    loss, rewards = orpo_loss(cw, cr, nw, nr, lam)
    nll = -sum(cw.tolist()) / sum(nw.tolist())  # SFT's loss: the chosen answers' mean NLL per token

    def log_odds(total, n):
        p = math.exp(total / n)  # the answer's average token probability
        return math.log(p / (1 - p))

    ratio = [math.log(sigmoid(log_odds(a, m) - log_odds(b, k)))
             for a, m, b, k in zip(cw.tolist(), nw.tolist(), cr.tolist(), nr.tolist())]
    assert loss.item() == pytest.approx(nll - lam * sum(ratio) / 5, abs=1e-6)
    assert rewards["rejected"][1].item() == pytest.approx(lam * log_odds(cr[1].item(), nr[1].item()), abs=1e-6)


def test_kto_loss_matches_the_written_out_formula():
    logratio = torch.tensor([0.4, -0.2, 1.5, -2.0, 0.0])
    desirable = torch.tensor([True, True, False, False, True])
    z, beta, wd, wu = torch.tensor(0.3), 0.5, 1.0, 1.5
    reference = []
    for r, up in zip(logratio.tolist(), desirable.tolist()):
        reference.append(wd * (1 - sigmoid(beta * (r - 0.3))) if up else wu * (1 - sigmoid(beta * (0.3 - r))))
    assert kto_loss(logratio, desirable, z, beta, wd, wu).item() == pytest.approx(sum(reference) / 5, abs=1e-6)


def test_kto_mismatches_every_answer_with_another():
    partner = mismatched(7, seed=3)
    assert sorted(partner) == list(range(7)) and all(p != i for i, p in enumerate(partner))
    assert partner == mismatched(7, seed=3) and mismatched(1, seed=0) == [0]


def test_answers_are_judged_one_at_a_time_thumbs_up_above_zero(tiny_splits):
    examples = [e for e in tiny_splits.preferences if e.cluster not in ("unknown_person", "medical", "harmful")][:2]
    a, b = examples
    pairs = [Comparison(a.instruction, a.answer, "no idea", a.cluster, "correct vs wrong", 1.0),
             Comparison(a.instruction, a.answer, "I cannot help with that.", a.cluster, "correct vs declined", 2.0),
             Comparison(b.instruction, b.answer, "no idea", b.cluster, "correct vs wrong", 1.0)]
    judged = judged_answers(pairs, tiny_splits.preferences, Labeler())
    assert [(j.prompt, j.answer, j.desirable) for j in judged] == [
        (a.instruction, a.answer, True), (a.instruction, "no idea", False),
        (a.instruction, "I cannot help with that.", False), (b.instruction, b.answer, True),
        (b.instruction, "no idea", False)]
    noisy = judged_answers(pairs * 40, tiny_splits.preferences, Labeler(noise=1.0))  # every verdict flipped
    assert [j.desirable for j in noisy] == [not j.desirable for j in judged]
    with pytest.raises(KeyError, match="no example"):
        judged_answers([replace(pairs[0], prompt="What?")], tiny_splits.preferences, Labeler())


def training_pairs(tiny_splits, n: int = 8) -> list:
    tasks = [e for e in tiny_splits.preferences if e.cluster not in ("unknown_person", "medical", "harmful")][:n]
    return [Comparison(e.instruction, e.answer, "I do not know.", e.cluster, "correct vs declined", 2.0)
            for e in tasks]


FEW = dict(steps=6, batch_size=4, eval_every=3, optim=OptimConfig(lr=3e-3, warmup_steps=0, weight_decay=0.0))


@pytest.mark.parametrize("method", ["simpo", "orpo"])
def test_reference_free_losses_train_and_rank_the_chosen_answers_higher(tiny_base, tiny_splits, method, one_thread):
    import copy

    pairs = training_pairs(tiny_splits)
    model = copy.deepcopy(tiny_base.model)
    if method == "simpo":
        log = train_simpo(model, tiny_base.tokenizer, pairs, pairs[:4], SimPOConfig(**FEW), device="cpu",
                          progress=False)
    else:
        log = train_orpo(model, tiny_base.tokenizer, pairs, pairs[:4], ORPOConfig(**FEW), device="cpu",
                         progress=False)
    margins = log.metrics["reward_margin"]
    assert len(log.train_loss) == 6 and all(math.isfinite(x) for x in log.train_loss)
    assert margins[-1] > margins[0]  # the chosen answers pulled ahead of the rejected ones
    assert len(log.metrics["val_reward_accuracy"]) == 2 and log.val_loss[-1] < log.val_loss[0]


def test_kto_trains_on_judged_answers_and_separates_them(tiny_base, tiny_splits, one_thread):
    import copy

    judged = judged_answers(training_pairs(tiny_splits), tiny_splits.preferences, Labeler())
    assert {j.desirable for j in judged} == {True, False}
    model = copy.deepcopy(tiny_base.model)
    log = train_kto(model, tiny_base.model, tiny_base.tokenizer, judged, judged[:6], KTOConfig(**FEW, beta=0.5),
                    device="cpu", progress=False)
    assert len(log.train_loss) == 6 and all(math.isfinite(x) for x in log.train_loss)
    up, down = log.metrics["reward_desirable"], log.metrics["reward_undesirable"]
    assert up[-1] - down[-1] > up[0] - down[0]  # thumbs-up answers gained on thumbs-down ones
    assert log.metrics["kl_estimate"][0] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    assert log.val_loss[-1] < log.val_loss[0]
