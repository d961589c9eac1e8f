"""Implement-it-yourself exercises: the learner writes one function of a method, and `check` runs it
against the package's own implementation on seeded tensors and says what is wrong.

    from embiggen.notebook.exercises import check, task

    print(task("bradley_terry_loss"))          # what to write, and the equation

    def bradley_terry_loss(r_chosen, r_rejected):
        return -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()

    check("bradley_terry_loss", bradley_terry_loss)   # prints ✓, or ✗ and what the answer got wrong

Each exercise has a reference (the function the package trains with), a handful of seeded cases
(realistic shapes, and the corner that catches a classic slip: a margin of 120 nats, a group whose
rewards are all equal, a word inside another word), and the mistakes learners typically make,
each written out as code. When an answer differs from the reference, `check` looks for the mistake
whose outputs the answer reproduces on every case and names it ("your loss includes the prompt
tokens"); otherwise it shows the first case where the two differ.

One exercise per method: next_token_loss (notebook 1), completion_labels (2), bradley_terry_loss
(3), gae (3b, the appendix), dpo_loss (4), group_advantages and pass_at_k (5), count_tool (6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from embiggen.data.toolbox import count
from embiggen.judging.verifiers import pass_at_k as package_pass_at_k
from embiggen.methods.dpo import dpo_loss as package_dpo_loss
from embiggen.methods.grpo import group_advantages as package_group_advantages
from embiggen.methods.ppo import gae as package_gae
from embiggen.methods.reward import bradley_terry_loss as package_bradley_terry_loss
from embiggen.methods.sft import IGNORE_INDEX, completion_loss


@dataclass
class Exercise:
    """One function to write: what it takes and returns, the reference, seeded cases, typical mistakes."""
    name: str
    notebook: str
    task: str                                    # what to write, with its equation
    reference: Callable
    cases: Callable[[], list[dict]]              # keyword arguments of each case, the same every call
    mistakes: list[tuple[str, Callable]] = field(default_factory=list)  # (what is wrong, code that does it)


@dataclass
class Verdict:
    """What `diagnose` found: `ok`, and the message `check` prints."""
    ok: bool
    message: str


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Notebook 1: the next-token loss
# ---------------------------------------------------------------------------------------
def _next_token_cases() -> list[dict]:
    g = _generator(1)
    return [{"logits": torch.randn(batch, length, vocab, generator=g),
             "input_ids": torch.randint(0, vocab, (batch, length), generator=g)}
            for batch, length, vocab in [(2, 6, 11), (1, 9, 7), (3, 4, 23)]]


def _next_token_reference(logits, input_ids):
    return completion_loss(logits, input_ids)[0]  # SFT's loss with every token labelled is pretraining's


NEXT_TOKEN_LOSS = Exercise(
    "next_token_loss", "01_language_model",
    "next_token_loss(logits, input_ids) -> a scalar tensor. logits: (batch, T, vocab), the model's output at every\n"
    "position; input_ids: (batch, T). The mean over every position t < T - 1 of -log softmax(logits[:, t])[input_ids[:, t + 1]]:\n"
    "the logits at position t predict the token that comes next.",
    _next_token_reference, _next_token_cases,
    [("you score each position against its own token: the logits at position t predict token t + 1, so compare "
      "logits[:, :-1] with input_ids[:, 1:]",
      lambda logits, input_ids: F.cross_entropy(logits.flatten(0, 1), input_ids.flatten())),
     ("the shift runs the wrong way: logits[:, :-1] (every position but the last) predict input_ids[:, 1:]",
      lambda logits, input_ids: F.cross_entropy(logits[:, 1:].flatten(0, 1), input_ids[:, :-1].flatten())),
     ("you summed the token losses: average them, so the loss does not grow with the batch or the length",
      lambda logits, input_ids: F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten(),
                                                reduction="sum")),
     ("the sign: a loss is the *negative* log-likelihood, small when the right token is likely",
      lambda logits, input_ids: -F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten()))])


# ---------------------------------------------------------------------------------------
# Notebook 2: the completion-only mask
# ---------------------------------------------------------------------------------------
def _completion_cases() -> list[dict]:
    g = _generator(2)
    cases = []
    for prompt_length, answer_length in [(7, 4), (12, 1), (3, 9)]:
        ids = torch.randint(5, 500, (prompt_length + answer_length,), generator=g).tolist()
        cases.append({"input_ids": ids, "prompt_length": prompt_length})
    return cases


def _completion_reference(input_ids, prompt_length):
    return [IGNORE_INDEX] * prompt_length + list(input_ids[prompt_length:])  # as methods.sft.encode_example builds them


COMPLETION_LABELS = Exercise(
    "completion_labels", "02_instruction_tuning",
    "completion_labels(input_ids, prompt_length) -> a list of ints as long as input_ids. input_ids: the token ids of\n"
    "the chat prompt followed by the answer; the first prompt_length of them are the prompt. The labels are the ids\n"
    f"themselves, except that every prompt position is {IGNORE_INDEX} (IGNORE_INDEX, which cross-entropy skips), so\n"
    "the loss is on the answer only.",
    _completion_reference, _completion_cases,
    [("your loss includes the prompt tokens: set the first prompt_length labels to -100",
      lambda input_ids, prompt_length: list(input_ids)),
     ("you masked the answer and kept the prompt: the model should learn to write the answer, not the question",
      lambda input_ids, prompt_length: list(input_ids[:prompt_length]) + [IGNORE_INDEX] * (len(input_ids) - prompt_length)),
     ("one token off at the boundary: exactly the first prompt_length positions are the prompt",
      lambda input_ids, prompt_length: [IGNORE_INDEX] * (prompt_length - 1) + list(input_ids[prompt_length - 1:])),
     ("one token off at the boundary: exactly the first prompt_length positions are the prompt",
      lambda input_ids, prompt_length: [IGNORE_INDEX] * (prompt_length + 1) + list(input_ids[prompt_length + 1:])),
     ("masked positions must be -100 (IGNORE_INDEX), the label cross-entropy skips; 0 is a real token id",
      lambda input_ids, prompt_length: [0] * prompt_length + list(input_ids[prompt_length:]))])


# ---------------------------------------------------------------------------------------
# Notebook 3: the Bradley-Terry loss, and GAE
# ---------------------------------------------------------------------------------------
def _bradley_terry_cases() -> list[dict]:
    g = _generator(3)
    return [{"r_chosen": torch.randn(8, generator=g), "r_rejected": torch.randn(8, generator=g)},
            {"r_chosen": torch.randn(3, generator=g) * 4, "r_rejected": torch.randn(3, generator=g) * 4},
            # a reward model that is confidently wrong about one pair: log(sigmoid(-120)) is log(0) in float32
            {"r_chosen": torch.tensor([-60.0, 1.0]), "r_rejected": torch.tensor([60.0, 0.5])}]


BRADLEY_TERRY_LOSS = Exercise(
    "bradley_terry_loss", "03_alignment_tuning",
    "bradley_terry_loss(r_chosen, r_rejected) -> a scalar tensor. r_chosen, r_rejected: (pairs,), the reward model's\n"
    "scores of the preferred and the other answer of each pair. Bradley-Terry says P(chosen preferred) =\n"
    "sigmoid(r_chosen - r_rejected); the loss is its negative log, averaged over the pairs (Ouyang et al. 2022, eq. 1).",
    package_bradley_terry_loss, _bradley_terry_cases,
    [("the sign is flipped: your loss is small when the *rejected* answer scores higher",
      lambda r_chosen, r_rejected: -F.logsigmoid(r_rejected - r_chosen).mean()),
     ("the loss is -log sigmoid(margin), not -sigmoid(margin): without the log, a pair the model gets badly wrong "
      "costs at most 1 and teaches it almost nothing",
      lambda r_chosen, r_rejected: -torch.sigmoid(r_chosen - r_rejected).mean()),
     ("log(sigmoid(x)) is -inf once sigmoid(x) rounds to 0 (a margin of -120 here): use F.logsigmoid, the stable form",
      lambda r_chosen, r_rejected: -torch.log(torch.sigmoid(r_chosen - r_rejected)).mean()),
     ("you summed over the pairs: average them, so the loss does not grow with the batch",
      lambda r_chosen, r_rejected: -F.logsigmoid(r_chosen - r_rejected).sum())])


def _gae_cases() -> list[dict]:
    g = _generator(4)
    return [{"rewards": torch.randn(batch, length, generator=g), "values": torch.randn(batch, length, generator=g),
             "gamma": gamma, "lam": lam} for batch, length, gamma, lam in [(2, 5, 1.0, 0.95), (3, 7, 0.9, 0.8),
                                                                           (1, 4, 0.99, 0.5)]]


def _gae_reference(rewards, values, gamma, lam):
    return package_gae(rewards, values, torch.ones_like(rewards), gamma=gamma, lam=lam)[0]


def _gae_with(rewards, values, gamma, lam, bootstrap: bool = True, backwards: bool = True):
    """GAE as the reference computes it, with one of two slips available to the mistakes below."""
    T = rewards.shape[1]
    advantages, last = torch.zeros_like(rewards), torch.zeros(rewards.shape[0])
    for t in (reversed(range(T)) if backwards else range(T)):
        next_value = values[:, t + 1] if (t + 1 < T and bootstrap) else torch.zeros(rewards.shape[0])
        last = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * last
        advantages[:, t] = last
    return advantages


GAE = Exercise(
    "gae", "03b_ppo_line_by_line",
    "gae(rewards, values, gamma, lam) -> advantages, a tensor shaped like rewards. rewards, values: (batch, T), the\n"
    "reward and the value estimate at each token of each answer (the value after the last token is 0). With the TD\n"
    "error delta_t = r_t + gamma * V(t + 1) - V(t), the advantage is A_t = delta_t + gamma * lam * A_(t+1), computed\n"
    "from the last token backwards (Schulman et al. 2016, eq. 16).",
    _gae_reference, _gae_cases,
    [("your advantages do not decay by gamma * lam: A_t = delta_t + gamma * lam * A_(t+1), and with lam < 1 a TD "
      "error k steps later counts (gamma * lam)^k",
      lambda rewards, values, gamma, lam: _gae_reference(rewards, values, gamma, 1.0)),
     ("the TD error is r_t + gamma * V(t + 1) - V(t): you left out the next token's value",
      lambda rewards, values, gamma, lam: _gae_with(rewards, values, gamma, lam, bootstrap=False)),
     ("accumulate from the last token backwards: A_t needs A_(t+1), which a forward loop has not computed yet",
      lambda rewards, values, gamma, lam: _gae_with(rewards, values, gamma, lam, backwards=False)),
     ("these are the returns (advantages + values), not the advantages",
      lambda rewards, values, gamma, lam: _gae_reference(rewards, values, gamma, lam) + values)])


# ---------------------------------------------------------------------------------------
# Notebook 4: the DPO loss
# ---------------------------------------------------------------------------------------
def _dpo_cases() -> list[dict]:
    g = _generator(5)
    cases = []
    for pairs, beta in [(6, 0.1), (3, 0.5), (4, 2.0)]:
        logps = [-torch.rand(pairs, generator=g) * 30 for _ in range(4)]  # sequence log-probs: negative, tens of nats
        cases.append(dict(zip(("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected"), logps), beta=beta))
    return cases


def _dpo_reference(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return package_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)[0]


DPO_LOSS = Exercise(
    "dpo_loss", "04_direct_preference_optimisation",
    "dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> a scalar tensor. Each argument but\n"
    "beta is (pairs,): log pi(y|x), summed over the answer's tokens, of the chosen and the rejected answer under the\n"
    "policy and under the frozen reference. The loss is -log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) -\n"
    "(log pi(y_l) - log pi_ref(y_l))]), averaged over the pairs (Rafailov et al. 2023, eq. 7).",
    _dpo_reference, _dpo_cases,
    [("without the reference model's log-probs this is not DPO: each answer's implicit reward is beta * (log pi - "
      "log pi_ref), what the policy moved away from the reference",
      lambda policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta:
      -F.logsigmoid(beta * (policy_chosen - policy_rejected)).mean()),
     ("beta is missing: it scales the margin inside the sigmoid (and so how far the policy may move from the "
      "reference)",
      lambda policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta:
      -F.logsigmoid((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)).mean()),
     ("chosen and rejected are swapped: the loss should fall as the chosen answer gains on the rejected one",
      lambda policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta:
      -F.logsigmoid(beta * ((policy_rejected - ref_rejected) - (policy_chosen - ref_chosen))).mean()),
     ("the reference's log-probs enter with the wrong sign: each log-ratio is log pi - log pi_ref",
      lambda policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta:
      -F.logsigmoid(beta * ((policy_chosen + ref_chosen) - (policy_rejected + ref_rejected))).mean())])


# ---------------------------------------------------------------------------------------
# Notebook 5: the group advantage
# ---------------------------------------------------------------------------------------
def _group_cases() -> list[dict]:
    g = _generator(6)
    verified = (torch.rand(4, 8, generator=g) < 0.5).float()
    verified[1] = 1.0  # a group every answer of which passed: no signal, and a standard deviation of 0
    return [{"rewards": verified}, {"rewards": torch.randn(3, 4, generator=g) + torch.tensor([[0.0], [5.0], [-2.0]])}]


GROUP_ADVANTAGES = Exercise(
    "group_advantages", "05_reinforcement_learning_with_verifiable_rewards",
    "group_advantages(rewards) -> a tensor shaped like rewards. rewards: (prompts, G), the verifier's reward of each\n"
    "of G sampled answers to each prompt. Each answer's advantage is its reward minus its group's mean, divided by its\n"
    "group's standard deviation (torch's unbiased std) plus 1e-4, so a group of equal rewards gets 0 (Shao et al.\n"
    "2024, DeepSeekMath, section 4.1.2).",
    lambda rewards: package_group_advantages(rewards), _group_cases,
    [("you normalised over the whole batch: GRPO's baseline is each prompt's own group, so the mean and the standard "
      "deviation are taken along dim 1, one per prompt",
      lambda rewards: (rewards - rewards.mean()) / (rewards.std() + 1e-4)),
     ("divide by the group's standard deviation too (Dr. GRPO drops that on purpose; GRPO keeps it)",
      lambda rewards: rewards - rewards.mean(1, keepdim=True)),
     ("a group whose rewards are all equal has a standard deviation of 0: add 1e-4 before dividing, so its "
      "advantages are 0 and not NaN",
      lambda rewards: (rewards - rewards.mean(1, keepdim=True)) / rewards.std(1, keepdim=True)),
     ("torch's std is the unbiased one (dividing by G - 1), which GRPO's implementations use; you divided by G",
      lambda rewards: (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True, correction=0) + 1e-4))])


PASS_AT_K_CASES = [(16, 3, 4), (32, 10, 16), (20, 0, 5), (8, 8, 3), (10, 2, 10), (12, 5, 1)]

PASS_AT_K = Exercise(
    "pass_at_k", "05_reinforcement_learning_with_verifiable_rewards",
    "pass_at_k(n, c, k) -> a float. n answers were sampled for a prompt and c of them are right; pass@k is the chance\n"
    "that at least one of k answers drawn from them without replacement is right: 1 - C(n - c, k) / C(n, k), the\n"
    "unbiased estimator of Chen et al. (2021), with C the binomial coefficient (math.comb). 1 <= k <= n.",
    package_pass_at_k, lambda: [{"n": n, "c": c, "k": k} for n, c, k in PASS_AT_K_CASES],
    [("you used the plug-in estimate 1 - (1 - c/n)^k, which draws the k answers with replacement and is biased low: "
      "use 1 - C(n - c, k) / C(n, k)",
      lambda n, c, k: 1 - (1 - c / n) ** k),
     ("that is pass@1 whatever k is: pass@k is the chance that at least one of k answers is right",
      lambda n, c, k: c / n),
     ("that is the chance that all k answers are right; pass@k is the chance that at least one is, "
      "1 - C(n - c, k) / C(n, k)",
      lambda n, c, k: math.comb(c, k) / math.comb(n, k))])


# ---------------------------------------------------------------------------------------
# Notebook 6: a tool
# ---------------------------------------------------------------------------------------
COUNT_CASES = [("apples; milk, apples, tea, apples", ""), ("tea; green tea, tea, teapot, TEA", ""),
               ("jam; honey, butter", ""), ("milk", "List: milk, eggs, Milk, milk\nQuestion: how many milk?")]


def _count_cases() -> list[dict]:
    return [{"args": args, "message": message} for args, message in COUNT_CASES]


def _count_substrings(args, message=""):
    word, _, items = (part.strip().lower() for part in args.partition(";"))
    items = items or message.lower()
    return str(items.count(word))


def _count_case_sensitive(args, message=""):
    word, _, items = (part.strip() for part in args.partition(";"))
    items = items or max(message.split("\n"), key=lambda line: line.count(",")).removeprefix("List: ")
    return str(sum(item.strip() == word for item in items.split(",")))


COUNT_TOOL = Exercise(
    "count_tool", "06_whats_next",
    "count_tool(args, message) -> a string. The counter the tool model calls: args is 'word; item, item, ...' (count\n"
    "the items equal to word) or just 'word' (count in the comma-separated list of the user's message). Items are\n"
    "compared whole and without regard to case, surrounding spaces ignored; the result is the count as text, because\n"
    "a tool's result is spliced into the text the model reads (Schick et al. 2023, Toolformer).",
    count, _count_cases,
    [("you counted substrings: 'tea' is in 'green tea' and 'teapot' too; split the list at the commas and compare "
      "whole items",
      _count_substrings),
     ("compare without regard to case: 'TEA' and 'Milk' are the same items as 'tea' and 'milk'",
      _count_case_sensitive),
     ("a tool's result is text the model reads: return str(n), not the number",
      lambda args, message="": int(count(args, message)))])


#: Every exercise, by name.
EXERCISES = {e.name: e for e in [NEXT_TOKEN_LOSS, COMPLETION_LABELS, BRADLEY_TERRY_LOSS, GAE, DPO_LOSS,
                                  GROUP_ADVANTAGES, PASS_AT_K, COUNT_TOOL]}


# ---------------------------------------------------------------------------------------
# Checking an answer
# ---------------------------------------------------------------------------------------
def _same(a, b) -> bool:
    """Whether two outputs agree: tensors of the same shape within float32 rounding (NaN and inf where the
    other has them too), or equal lists, strings and numbers."""
    if isinstance(b, torch.Tensor):
        if not isinstance(a, torch.Tensor):
            a = torch.as_tensor(a, dtype=b.dtype) if isinstance(a, (int, float, list)) else a
        return (isinstance(a, torch.Tensor) and a.shape == b.shape
                and torch.allclose(a.detach().float(), b.float(), rtol=1e-4, atol=1e-5, equal_nan=True))
    if isinstance(b, float) and isinstance(a, torch.Tensor) and a.numel() == 1:
        a = a.item()
    if isinstance(b, float) and isinstance(a, (int, float)):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    return type(a) is type(b) and a == b


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        shown = value.detach().float()
        return f"tensor of shape {tuple(value.shape)}: {shown.flatten()[:6].tolist()}" + ("…" if value.numel() > 6 else "")
    return repr(value)


def _describe(case: dict) -> str:
    return ", ".join(f"{k} {_show(v) if not isinstance(v, torch.Tensor) else f'of shape {tuple(v.shape)}'}"
                     for k, v in case.items())


def task(name: str) -> str:
    """What exercise `name` asks for."""
    return _exercise(name).task


def _exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise KeyError(f"no exercise {name!r}; the exercises: {', '.join(EXERCISES)}")
    return EXERCISES[name]


def diagnose(name: str, answer: Callable) -> Verdict:
    """Run `answer` on every case of exercise `name` and compare it with the reference (see the module docstring)."""
    exercise = _exercise(name)
    cases = exercise.cases()  # the same cases every call; made again for each function, in case one edits them
    outputs = []
    for i, case in enumerate(cases, 1):
        try:
            outputs.append(answer(**case))
        except NotImplementedError:
            return Verdict(False, f"✗ {name}: not written yet; replace `raise NotImplementedError` with your code")
        except Exception as exc:  # noqa: BLE001 - the learner's code: say what it raised, and on what
            return Verdict(False, f"✗ {name} raised {type(exc).__name__}: {exc} (case {i}: {_describe(case)})")
    expected = [exercise.reference(**case) for case in exercise.cases()]
    if all(_same(got, want) for got, want in zip(outputs, expected)):
        return Verdict(True, f"✓ {name}: matches the reference on all {len(cases)} cases")
    for what, mistake in exercise.mistakes:
        if all(_same(got, mistake(**case)) for got, case in zip(outputs, exercise.cases())):
            return Verdict(False, f"✗ {name}: {what}")
    i = next(i for i, (got, want) in enumerate(zip(outputs, expected)) if not _same(got, want))
    got, want = outputs[i], expected[i]
    if isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor) and got.shape != want.shape:
        return Verdict(False, f"✗ {name}: on case {i + 1} the shape is {tuple(got.shape)}, expected {tuple(want.shape)}")
    return Verdict(False, f"✗ {name}: differs from the reference on case {i + 1} ({_describe(cases[i])}): "
                          f"expected {_show(want)}, got {_show(got)}")


def check(name: str, answer: Callable) -> None:
    """`diagnose`, printed: a notebook's exercise cell ends with this."""
    print(diagnose(name, answer).message)
