"""The report card's headline, and the README's figures table, which is the headline of the committed laptop run."""

import json
import re
from pathlib import Path

import pytest

from embiggen.presets import STAGE_NAMES
from embiggen.report import (README_BEGIN, README_END, headline_lines, headline_markdown, headline_rows, report_markdown,
                             with_headline)

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "report-laptop.json"


def test_the_readmes_figures_are_the_headline_of_the_committed_laptop_report():
    report = json.loads(COMMITTED.read_text())
    assert report["preset"] == "laptop" and set(STAGE_NAMES) <= set(report), "a whole laptop run, every stage"
    readme = (ROOT / "README.md").read_text()
    table = readme.split(README_BEGIN)[1].split(README_END)[0]
    again = "python -m embiggen.report docs/report-laptop.json --readme README.md --markdown docs/report-laptop.md"
    assert table.strip() == headline_markdown(report).strip(), f"the README's table is not the headline: {again}"
    assert (ROOT / "docs" / "report-laptop.md").read_text() == report_markdown(report), f"nor is the card: {again}"


def test_the_headline_says_how_many_prompts_each_rate_rests_on():
    report = {"preset": "laptop", "seed": 1,
              "base": {"params": 935040, "trained": "yes", "train_seconds": 297.4, "tokens_per_second": 11200.5,
                       "fact_cloze_accuracy": 1.0, "n_fact_prompts": 200, "instruction_answer_rate": 0.0,
                       "n_instruction_prompts": 400, "name_copy_rate": 0.0, "n_name_prompts": 480},
              "sft": {"train_seconds": 245.0, "n_train": 12000, "heldout_cluster": "fact_check",
                      "per_cluster": {"fact_qa": 1.0, "counting": 0.48, "arithmetic": 0.9, "fact_check": 0.0}},
              "ppo": {"wins_ties_losses": [89, 208, 3], "win_rate_vs_sft": 0.9674, "win_tie_rate_vs_sft": 0.6433,
                      "honest_rate_ppo": 0.52, "heldin_template_accuracy_sft": 0.886, "kl": 1.22,
                      "gold_score_ppo": 0.79, "named_rate_unknown_person_sft": 0.0, "named_rate_unknown_person_ppo": 0.1,
                      "misnamed_rate_unknown_person_sft": 0.3, "misnamed_rate_unknown_person_ppo": 0.04,
                      "honest_rate_unknown_person_ppo": 0.85,
                      "n_eval_prompts_per_rate": {"named_rate_unknown_person": 48},
                      "over_refusal_rate_paraphrased_sft": 0.02, "over_refusal_rate_paraphrased": 0.06,
                      "task_correct_rate_paraphrased_sft": 0.5, "task_correct_rate_paraphrased": 0.55},
              "dpo": {"honest_rate": 0.57, "kl": 0.54, "gold_score": 0.763},
              "orpo": {"train_seconds": 51.0, "n_pairs": 3000, "lam": 0.1, "honest_rate": 0.6, "kl": 0.59,
                       "gold_score": 0.667},
              "kto": {"train_seconds": 70.2, "n_answers": 6000, "beta": 0.1, "kl": 0.2, "gold_score": 0.473}}
    rows = {(stage, what): (value, mark) for stage, what, value, mark in headline_rows(report)}
    assert rows["base", "size and training"] == ("935,040 parameters, 297 s (11,200 tokens/s)", "✓")
    assert rows["base", "facts recalled by greedy autocomplete"] == ("100% of 200", "✓")
    assert rows["base", "unseen names copied where the text repeats them"] == ("0% of 480", "")  # no target
    assert rows["sft", "training"] == ("245 s on 12,000 examples", "✗")  # target <= 180 s
    # the held-out cluster is not a trained one: 0% there is not the weakest trained cluster
    assert rows["sft", "its weakest trained cluster"] == ("counting 48% (the other 2: 90% to 100%)", "✗")
    assert rows["ppo", "labeler's verdict, PPO against SFT"] == (
        "89 wins, 208 ties, 3 losses: 97% of decisive ones, 64% counting ties as half", "✗")  # 64.3% < 65%
    assert rows["dpo", "KL from SFT / gold score, greedy"] == ("0.54 nats / 0.763 (PPO: 1.22 nats / 0.790)", "")
    # DPO's relatives are read as DPO is, DPO's own figures beside them (not PPO's)
    assert rows["orpo", "training"] == ("51 s on 3,000 pairs, lambda 0.1", "")
    assert rows["kto", "training"] == ("70 s on 6,000 answers judged alone, beta 0.1", "")
    assert rows["orpo", "KL from SFT / gold score, greedy"] == ("0.59 nats / 0.667 (DPO: 0.54 nats / 0.763)", "")
    assert rows["orpo", "honest / refused: harmful / ordinary"] == ("60% / — / — (DPO: 57% / — / —)", "")
    assert ("simpo", "training") not in rows  # a stage the report lacks has no lines
    assert rows["ppo", "... hedges about people who do not exist naming"] == (
        "the right name 0% → 10%, someone else's 30% → 4% of 48", "✓")  # honest 85% >= 80%, misnamed 4% <= 5%
    assert rows["ppo", "ordinary questions in new words, SFT → PPO"] == ("2% → 6% declined, 50% → 55% right", "✗")
    assert headline_lines(report)[-1] == "  training, every stage together: 664 s"  # 297.4 + 245 + 51 + 70.2 = 663.6


def test_a_pretrained_base_is_said_to_be_untrained_and_a_missing_figure_is_a_dash():
    report = {"preset": "pretrained", "seed": 1, "base": {"params": 134515008, "trained": "no: the pretrained model x",
                                                         "train_seconds": None}}
    rows = headline_rows(report)
    assert rows[0] == ("base", "size and training", "134,515,008 parameters, pretrained (not trained here)", "")
    assert rows[1][2] == "—" and all(mark == "" for *_, mark in rows)  # no figures, and no targets for this preset


def test_with_headline_rewrites_only_the_table_between_its_markers():
    report = {"preset": "laptop", "seed": 1, "base": {"fact_cloze_accuracy": 0.5, "n_fact_prompts": 10}}
    readme = f"intro\n{README_BEGIN}\n| old | table |\n{README_END}\nafter\n"
    written = with_headline(readme, report)
    assert written.startswith(f"intro\n{README_BEGIN}\n| stage | figure | value | target |")
    assert written.endswith(f"{README_END}\nafter\n") and "old" not in written
    assert "| base | facts recalled by greedy autocomplete | 50% of 10 | ✗ |" in written
    assert with_headline(written, report) == written  # writing it twice changes nothing
    with pytest.raises(ValueError, match="marker"):
        with_headline("a README without the markers", report)


def test_every_python_dash_m_in_the_makefile_names_a_module_that_runs():
    makefile = (ROOT / "Makefile").read_text()
    named = set(re.findall(r"-m (embiggen[\w.]*)", makefile))
    assert {"embiggen.report", "embiggen.notebook.slim"} <= named
    for module in named:
        path = ROOT / Path(*module.split(".")).with_suffix(".py")
        assert path.is_file(), f"Makefile runs python -m {module}, which is no module"
        assert 'if __name__ == "__main__":' in path.read_text(), f"python -m {module} would do nothing"
