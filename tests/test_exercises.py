"""The implement-it-yourself checkers: a right answer passes, each typical mistake is named, anything else is shown.

Each exercise is answered here twice: by the package's reference, and by a plain solution written out below in
another way (loops, other formulas), as a learner might; both must pass. Every mistake an exercise lists must be
caught and named by its own message.
"""

import json
import math
import re
import statistics

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from embiggen.notebook.exercises import EXERCISES, check, diagnose, task


def plain_next_token_loss(logits, input_ids):
    losses = [-torch.log_softmax(logits[b, t], -1)[input_ids[b, t + 1]]
              for b in range(logits.shape[0]) for t in range(logits.shape[1] - 1)]
    return torch.stack(losses).mean()


def plain_completion_labels(input_ids, prompt_length):
    return [-100 if i < prompt_length else token for i, token in enumerate(input_ids)]


def plain_bradley_terry_loss(r_chosen, r_rejected):
    return F.softplus(r_rejected - r_chosen).mean()  # -log sigmoid(x) = log(1 + e^-x)


def plain_gae(rewards, values, gamma, lam):
    out = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        T = rewards.shape[1]
        for t in range(T):  # the sum form: A_t = sum_k (gamma lam)^k delta_(t+k)
            total = 0.0
            for k in range(T - t):
                next_value = values[b, t + k + 1].item() if t + k + 1 < T else 0.0
                delta = rewards[b, t + k].item() + gamma * next_value - values[b, t + k].item()
                total += (gamma * lam) ** k * delta
            out[b, t] = total
    return out


def plain_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return torch.tensor([math.log1p(math.exp(-beta * m)) for m in margin.tolist()]).mean()


def plain_group_advantages(rewards):
    rows = []
    for group in rewards.tolist():
        mean, std = statistics.mean(group), statistics.stdev(group)
        rows.append([(r - mean) / (std + 1e-4) for r in group])
    return torch.tensor(rows)


def plain_pass_at_k(n, c, k):
    if n - c < k:
        return 1.0
    miss_all = 1.0
    for i in range(n - c + 1, n + 1):  # Chen et al.'s product form of C(n - c, k) / C(n, k)
        miss_all *= 1 - k / i
    return 1 - miss_all


def plain_count_tool(args, message=""):
    word, _, items = args.partition(";")
    if not items.strip():
        items = max(re.findall(r"[A-Za-z]+(?:, [A-Za-z]+)+", message), key=len)
    return str([item.strip().lower() for item in items.split(",")].count(word.strip().lower()))


PLAIN = {"next_token_loss": plain_next_token_loss, "completion_labels": plain_completion_labels,
         "bradley_terry_loss": plain_bradley_terry_loss, "gae": plain_gae, "dpo_loss": plain_dpo_loss,
         "group_advantages": plain_group_advantages, "pass_at_k": plain_pass_at_k, "count_tool": plain_count_tool}


def test_every_exercise_has_a_plain_solution_here_and_two_mistakes_or_more():
    assert set(PLAIN) == set(EXERCISES)
    assert all(len(e.mistakes) >= 2 for e in EXERCISES.values())
    assert {e.notebook[:2] for e in EXERCISES.values()} == {"01", "02", "03", "04", "05", "06"}  # one per notebook


@pytest.mark.parametrize("name", EXERCISES)
def test_the_reference_and_a_plain_solution_pass(name):
    assert diagnose(name, EXERCISES[name].reference).ok
    verdict = diagnose(name, PLAIN[name])
    assert verdict.ok, verdict.message
    assert verdict.message.startswith(f"✓ {name}: matches the reference on all")


@pytest.mark.parametrize("name, index", [(n, i) for n, e in EXERCISES.items() for i in range(len(e.mistakes))])
def test_each_typical_mistake_is_named(name, index):
    what, mistake = EXERCISES[name].mistakes[index]
    verdict = diagnose(name, mistake)
    assert not verdict.ok and verdict.message == f"✗ {name}: {what}"


def test_the_classic_slips_are_named_in_the_learners_words():
    def prompt_in_loss(input_ids, prompt_length):
        return list(input_ids)

    assert "your loss includes the prompt tokens" in diagnose("completion_labels", prompt_in_loss).message

    def unstable(r_chosen, r_rejected):
        return -torch.log(torch.sigmoid(r_chosen - r_rejected)).mean()

    assert "use F.logsigmoid" in diagnose("bradley_terry_loss", unstable).message


def test_an_unwritten_stub_a_crash_a_wrong_shape_and_an_unknown_mistake():
    def stub(logits, input_ids):
        raise NotImplementedError

    assert diagnose("next_token_loss", stub).message == (
        "✗ next_token_loss: not written yet; replace `raise NotImplementedError` with your code")

    def crashes(logits, input_ids):
        return logits @ input_ids

    message = diagnose("next_token_loss", crashes).message
    assert message.startswith("✗ next_token_loss raised RuntimeError") and "case 1: logits of shape (2, 6, 11)" in message

    def per_token(rewards, values, gamma, lam):
        return plain_gae(rewards, values, gamma, lam)[:, :-1]

    assert diagnose("gae", per_token).message == "✗ gae: on case 1 the shape is (2, 4), expected (2, 5)"

    def zeros(rewards):
        return torch.zeros_like(rewards)

    message = diagnose("group_advantages", zeros).message
    assert message.startswith("✗ group_advantages: differs from the reference on case 1") and "expected tensor" in message


def test_an_answer_that_edits_its_inputs_is_still_compared_with_untouched_ones():
    def in_place(input_ids, prompt_length):
        input_ids[:prompt_length] = [-100] * prompt_length  # right, but it writes into the case
        return input_ids

    assert diagnose("completion_labels", in_place).ok


def test_check_prints_the_verdict_and_task_says_what_to_write(capsys):
    check("dpo_loss", plain_dpo_loss)
    assert capsys.readouterr().out == "✓ dpo_loss: matches the reference on all 3 cases\n"
    assert "Rafailov et al. 2023" in task("dpo_loss")
    with pytest.raises(KeyError, match="no exercise 'ppo'; the exercises: next_token_loss"):
        task("ppo")


NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def solution_cell(name):
    """The solutions notebook's "Implement it yourself" cell whose code defines `name` (or my_`name`)."""
    notebook = EXERCISES[name].notebook[:2]  # 03b, the appendix, is solved with notebook 3
    for path in sorted((NOTEBOOKS / "solutions").glob(f"{notebook}_*_solutions.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"])
            if text.startswith("## Implement it yourself") and re.search(rf"def (my_)?{name}\(", text):
                return text
    raise AssertionError(f"no solution to {name} in notebooks/solutions/{notebook}_*")


@pytest.mark.parametrize("name", EXERCISES)
def test_each_solutions_notebooks_answer_passes_its_checker(name):
    namespace = {}
    exec(solution_cell(name).split("```python\n")[1].split("```")[0], namespace)  # pasted as a learner would
    answer = namespace.get(f"my_{name}", namespace.get(name))
    verdict = diagnose(name, answer)
    assert verdict.ok, verdict.message


@pytest.mark.parametrize("name", EXERCISES)
def test_each_exercise_has_a_stub_cell_in_its_notebook_left_unwritten(name):
    path = next(NOTEBOOKS.glob(f"{EXERCISES[name].notebook}.ipynb"))
    stubs = [c for c in json.loads(path.read_text())["cells"]
             if c["cell_type"] == "code" and f'check("{name}",' in "".join(c["source"])]
    assert len(stubs) == 1, f"{path.name} should have one cell that checks {name}"
    assert "raise NotImplementedError" in "".join(stubs[0]["source"])
    printed = "".join("".join(o.get("text", "")) for o in stubs[0].get("outputs", []))
    assert "not written yet" in printed, "the committed stub should show the learner what an unwritten answer prints"


def test_a_number_may_come_back_as_a_one_element_tensor():
    assert diagnose("pass_at_k", lambda n, c, k: torch.tensor(1.0 - math.comb(n - c, k) / math.comb(n, k))).ok
