import pytest

from embiggen.evaluate import (exact_match, fact_cloze, few_shot_prompt, first_line, instruction_answer_rate,
                               normalize, starts_with_answer)


def test_normalize_and_first_line():
    assert normalize("  Redford.\n") == "redford"
    assert normalize('"Yes!"') == "yes"
    assert first_line("Redford\n2. Where does Bruno live?") == "Redford"
    assert first_line("   ") == ""


def test_exact_match_on_fixed_strings():
    assert exact_match(" Redford.", "Redford")
    assert exact_match("redford\nmore text", "Redford")
    assert not exact_match("2. Where does Alma live?", "Redford")
    assert not exact_match("Redford is nice", "Redford")
    assert exact_match("apples, bread, milk", "apples, bread, milk")


def test_starts_with_answer_respects_word_boundaries():
    assert starts_with_answer(" Redford. Alma works", "Redford")
    assert starts_with_answer(" an artist.", "an artist")
    assert not starts_with_answer(" Redfordshire", "Redford")
    assert not starts_with_answer(" a baker", "an artist")


def test_few_shot_prompt_format():
    assert few_shot_prompt([("Q1?", "A1")], "Q2?") == "Q: Q1?\nA: A1\n\nQ: Q2?\nA:"


def test_fact_cloze_scores_every_fact(tiny_base):
    result = fact_cloze(tiny_base.model, tiny_base.tokenizer, tiny_base.world.people)
    assert len(result["rows"]) == 5 * len(tiny_base.world.people)
    assert result["accuracy"] == sum(r["correct"] for r in result["rows"]) / len(result["rows"])
    for r in result["rows"]:
        assert r["correct"] == starts_with_answer(r["completion"], r["expected"])


def test_instruction_answer_rate_counts_exact_matches(tiny_base):
    result = instruction_answer_rate(tiny_base.model, tiny_base.tokenizer, tiny_base.world, n=16)
    assert len(result["rows"]) == 16 and len(result["per_cluster"]) == 8
    assert result["rate"] == sum(exact_match(r["response"], r["answer"]) for r in result["rows"]) / 16


def test_confusion_matrix_counts_each_pair_and_others():
    from embiggen.evaluate import confusion_matrix

    rows = [{"answer": "1", "response": "1"}, {"answer": "1", "response": "2."}, {"answer": "2", "response": " 2\nmore"},
            {"answer": "2", "response": "2"}, {"answer": "3", "response": "three"}, {"answer": "3", "response": "2"}]
    labels = ["1", "2", "3"]
    # the same matrix, counted by hand: rows are gold answers, columns the responses, last column "other"
    expected = [[1, 1, 0, 0],
                [0, 2, 0, 0],
                [0, 1, 0, 1]]
    assert confusion_matrix(rows, labels) == expected
    # the diagonal agrees with exact_match
    assert sum(expected[i][i] for i in range(3)) == sum(exact_match(r["response"], r["answer"]) for r in rows)
    with pytest.raises(ValueError, match="not one of the labels"):
        confusion_matrix([{"answer": "7", "response": "7"}], labels)
