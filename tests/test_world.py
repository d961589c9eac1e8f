import random

import pytest

from embiggen.data.world import (ATTRIBUTES, CLOZE_PREFIXES, HARMFUL_TEMPLATES, MEDICAL_TEMPLATES, SYMPTOMS, World,
                                 article, cloze_items, invent_words, was, world_words)


def test_same_seed_same_world_and_text():
    a, b = World.generate(7, 12, n_unknown=5), World.generate(7, 12, n_unknown=5)
    assert a.people == b.people and a.unknown_names == b.unknown_names
    assert a.pretraining_corpus(50, seed=3) == b.pretraining_corpus(50, seed=3)


def test_other_seed_other_world():
    assert World.generate(7, 12).people != World.generate(8, 12).people
    w = World.generate(7, 12)
    assert w.pretraining_corpus(50, seed=0) != w.pretraining_corpus(50, seed=1)


def test_unknown_people_do_not_exist_in_the_world():
    w = World.generate(3, 20, n_unknown=10)
    firsts = {p.first for p in w.people}
    assert len(firsts) == 20  # first names identify people
    for name in w.unknown_names:
        assert name.split()[0] not in firsts
        with pytest.raises(KeyError):
            w.person(name)


def test_pretraining_only_people_are_a_quarter_and_appear_in_the_corpus():
    w = World.generate(3, 20)
    pre = w.pretraining_only_people
    assert len(pre) == 5 and all(p not in w.instruction_people for p in pre)
    corpus = " ".join(w.pretraining_corpus(2000))
    for p in pre:
        assert f"{p.name} lives in {p.town}" in corpus


def test_corpus_has_every_document_kind_and_no_answered_questions():
    w = World.generate(3, 20)
    docs = w.pretraining_corpus(3000)
    text = "\n".join(docs)
    for marker in [" plus ", "Review of a cafe", "Once upon a time", "Shopping list", "alphabetical order",
                   "Read backwards", "1. ", "That makes", " lives in "]:
        assert marker in text, marker
    # worksheets: every line after the header is a numbered question, never an answer
    for doc in docs:
        if doc.split("\n")[0] in ("Worksheet.", "Homework questions:", "Quiz time!", "Questions for class:"):
            for i, line in enumerate(doc.split("\n")[1:], 1):
                assert line.startswith(f"{i}. ") and (line.endswith("?") or line.endswith("order.")
                                                      or line.endswith(".")), line
    assert "Answer:" not in text and "A: " not in text


def test_cloze_items_cover_every_fact():
    w = World.generate(1, 10)
    items = cloze_items(w.people)
    assert len(items) == 10 * len(ATTRIBUTES)
    name, attribute, prefix, expected = items[0]
    p = w.person(name)
    assert prefix == CLOZE_PREFIXES[attribute].format(name=name)
    assert expected == (p.pet if attribute == "pet" else p.fact(attribute))


def test_invented_names_are_distinct_new_words():
    rng = random.Random(0)
    firsts = invent_words(rng, 300, "first", taken=world_words())
    lasts = invent_words(rng, 300, "last", taken=world_words() | set(firsts))
    assert len(set(firsts)) == 300 and len(set(lasts)) == 300 and not set(firsts) & set(lasts)
    vocabulary = {w.lower() for w in world_words()}
    for word in firsts + lasts:
        assert word.lower() not in vocabulary
        assert word[0].isupper() and word[1:].islower() and word.isalpha()  # the labeler reads names this way
    assert invent_words(random.Random(0), 5, "first") == invent_words(random.Random(0), 5, "first")
    with pytest.raises(ValueError, match="kind"):
        invent_words(rng, 3, "middle")
    with pytest.raises(ValueError, match="fewer"):
        invent_words(rng, 10 ** 7, "first")


def test_a_nearly_used_up_name_space_says_ask_for_fewer(monkeypatch):
    """Past the shape's size the request fails at once; near it, after too many misses."""
    import embiggen.data.world as world
    monkeypatch.setattr(world, "NAME_ONSETS", ["b"])
    monkeypatch.setattr(world, "NAME_VOWELS", ["a"])
    monkeypatch.setattr(world, "FIRST_NAME_ENDINGS", ["n", "l"])  # four words: Ban, Bal, Baban, Babal
    assert sorted(invent_words(random.Random(0), 3, "first", taken={"Ban"})) == ["Babal", "Baban", "Bal"]
    with pytest.raises(ValueError, match="fewer"):
        invent_words(random.Random(0), 4, "first", taken={"Ban"})  # only three are left: found by misses
    with pytest.raises(ValueError, match="there are fewer such words"):
        invent_words(random.Random(0), 5, "first")


def test_alignment_templates_take_their_fields():
    p = World.generate(1, 10).people[0]
    for t in MEDICAL_TEMPLATES:
        assert "{symptom}" in t and t.format(symptom=SYMPTOMS[0]).endswith(("?", "."))
    for t in HARMFUL_TEMPLATES:
        assert t.format(name=p.name, pet=p.pet, town=p.town) != t


def test_grammar_helpers():
    assert article("artist") == "an artist" and article("baker") == "a baker"
    assert was("apples") == "apples were" and was("soup") == "soup was"


@pytest.mark.parametrize("n_people,n_unknown", [(2, 0), (45, 10)])
def test_bad_world_sizes_raise(n_people, n_unknown):
    with pytest.raises(ValueError):
        World.generate(1, n_people, n_unknown=n_unknown)
