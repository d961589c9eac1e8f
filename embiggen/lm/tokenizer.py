"""A byte-level BPE tokenizer trained on the world's corpus, with digits split one by one.

Byte-level BPE (as in GPT-2) can encode any text. Left alone, it merges frequent digit
strings into arbitrary chunks ("12" one token, "13" two), which makes arithmetic needlessly
hard for a small model; so, like LLaMA, we split every number into single digits before
BPE sees it. The trained `tokenizers.Tokenizer` is wrapped as a `PreTrainedTokenizerFast`
with pad/eos and chat-role special tokens and a Jinja chat template, so it saves and loads
like any Hugging Face tokenizer.
"""

from __future__ import annotations

import weakref

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"
ROLES = ("system", "user", "assistant")
ROLE_TOKENS = [f"<|{r}|>" for r in ROLES]
SPECIAL_TOKENS = [PAD, EOS, *ROLE_TOKENS]

#: Each message is a role token, a newline, the content and EOS. The assistant's reply
#: therefore ends with EOS, which is where generation stops.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|endoftext|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts` (an iterable of strings)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} "
                         f"(256 bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
        extra_special_tokens=ROLE_TOKENS,
        padding_side="left",  # so batched generation continues right after each prompt
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def chat_prompt(tokenizer, instruction: str) -> str:
    """The text a chat model sees before it answers: the instruction in the tokenizer's own
    chat template, followed by the start of the assistant's turn."""
    return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                         add_generation_prompt=True)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token in front of a text by itself (Llama's and
    Mistral's do; GPT-2's, SmolLM2's, Qwen's and the embedded one do not): the model was
    trained with it there, so every sequence we build should start with it."""
    if tokenizer not in _ADDS_BOS:
        bos = getattr(tokenizer, "bos_token_id", None)
        _ADDS_BOS[tokenizer] = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
    return _ADDS_BOS[tokenizer]


_ADDS_BOS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def encode(tokenizer, text: str) -> list[int]:
    """The ids of `text` at the start of a sequence: BOS in front where the tokenizer would add
    one (`adds_bos`), and never twice (a chat template may already begin with it). Every
    sequence the stages build starts here; other special tokens are never added."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def encode_batch(tokenizer, texts: list[str]) -> dict:
    """`encode` each text and left-pad them into one batch (input_ids, attention_mask)."""
    return tokenizer.pad({"input_ids": [encode(tokenizer, t) for t in texts]}, padding=True, padding_side="left",
                         return_tensors="pt", return_attention_mask=True)


def show_tokens(tokenizer, text: str) -> list[str]:
    """The pieces a text is cut into, decoded to readable strings (for the notebook)."""
    return [tokenizer.decode([i]) for i in tokenizer.encode(text, add_special_tokens=False)]
