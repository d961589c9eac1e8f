import pytest
from transformers import AutoTokenizer

from embiggen.data.world import World
from embiggen.lm.tokenizer import EOS, ROLE_TOKENS, show_tokens, train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(World.generate(2, 12).pretraining_corpus(500), vocab_size=400)


def test_round_trip(tok):
    for text in ["Alma Brook lives in Redford.", "12 plus 30 is 42.", "Weird: ünïcödé ☃ text!\n\tok"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_digits_are_split_one_by_one(tok):
    pieces = show_tokens(tok, "The sum of 123 and 4567 is 4690.")
    digits = [p for p in pieces if any(ch.isdigit() for ch in p)]
    assert digits == list("123") + list("4567") + list("4690")


def test_special_tokens_are_single_tokens(tok):
    for special in [EOS, *ROLE_TOKENS, tok.pad_token]:
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    assert tok.eos_token == EOS and tok.pad_token_id != tok.eos_token_id


def test_chat_template(tok):
    messages = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|user|>\nWhat is 2 plus 3?<|endoftext|><|assistant|>\n5<|endoftext|>"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nWhat is 2 plus 3?<|endoftext|><|assistant|>\n"


def test_save_and_load(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Cleo has a pet owl. 7 minus 2 is 5."
    assert again.encode(text) == tok.encode(text)
    assert again.chat_template == tok.chat_template and again.padding_side == "left"


def test_vocab_too_small():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["hello"], vocab_size=100)
