import pytest
import torch
import torch.nn.functional as F

from embiggen.lm.tokenizer import chat_prompt
from embiggen.methods.sft import (IGNORE_INDEX, SFTData, batch_loss, completion_loss, encode_example, pack_examples,
                                  pad_batch)
from embiggen.presets import OptimConfig, SFTConfig


def test_completion_only_masking_on_a_hand_built_example(tiny_base):
    tok = tiny_base.tokenizer
    enc = encode_example(tok, "What is 2 plus 3?", "5")
    prompt_ids = tok("<|user|>\nWhat is 2 plus 3?<|endoftext|><|assistant|>\n", add_special_tokens=False)["input_ids"]
    answer_ids = tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc["input_ids"] == prompt_ids + answer_ids
    assert enc["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    assert enc["labels"][-1] == tok.eos_token_id  # the model learns to stop
    assert chat_prompt(tok, "Hi") == "<|user|>\nHi<|endoftext|><|assistant|>\n"


def test_completion_loss_matches_reference():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, -100, 6, -100]])
    # reference: position t predicts labels[t+1]; average over labelled targets
    terms = []
    for b in range(2):
        for t in range(4):
            target = labels[b, t + 1].item()
            if target != -100:
                terms.append(-F.log_softmax(logits[b, t], -1)[target])
    loss, n = completion_loss(logits, labels)
    assert n.item() == len(terms) == 5
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)


def test_all_masked_batch_gives_a_finite_zero_loss(tiny_base):
    logits = torch.randn(2, 4, 9, requires_grad=True)
    loss, n = completion_loss(logits, torch.full((2, 4), IGNORE_INDEX))
    assert n.item() == 0 and torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_padding_is_masked(tiny_base):
    tok = tiny_base.tokenizer
    a, b = encode_example(tok, "Hi", "yes"), encode_example(tok, "A much longer instruction here", "no")
    batch = pad_batch([a, b], tok.pad_token_id)
    n_a = len(a["input_ids"])
    assert batch["attention_mask"][0].tolist() == [1] * n_a + [0] * (batch["input_ids"].shape[1] - n_a)
    assert (batch["labels"][0, n_a:] == IGNORE_INDEX).all()


def test_packing_keeps_examples_separate(tiny_base):
    """The logits of each example inside a packed row equal its logits on its own."""
    tok, model = tiny_base.tokenizer, tiny_base.model
    examples = [encode_example(tok, "Where does Alma live?", "Redford"), encode_example(tok, "What is 3 plus 4?", "7"),
                encode_example(tok, "Sort: b, a", "a, b")]
    total = sum(len(e["input_ids"]) for e in examples)
    packed = pack_examples(examples, max_length=total + 3, pad_token_id=tok.pad_token_id)
    assert packed["input_ids"].shape == (1, total + 3)
    with torch.no_grad():
        row = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        start = 0
        for e in examples:
            alone = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            assert torch.allclose(row[start: start + len(e["input_ids"])], alone, atol=1e-4)
            start += len(e["input_ids"])
    # labels of the packed row are the examples' labels, then masked padding
    assert packed["labels"][0, :total].tolist() == sum((e["labels"] for e in examples), [])
    assert (packed["labels"][0, total:] == IGNORE_INDEX).all()


def test_packing_starts_a_new_row_when_full(tiny_base):
    tok = tiny_base.tokenizer
    examples = [encode_example(tok, "Hi", "yes") for _ in range(5)]
    n = len(examples[0]["input_ids"])
    packed = pack_examples(examples, max_length=2 * n, pad_token_id=tok.pad_token_id)
    assert packed["input_ids"].shape == (3, 2 * n)
    assert packed["position_ids"][0].tolist() == list(range(n)) * 2


@pytest.mark.parametrize("packing", [False, True])
def test_sft_batches_have_labels(tiny_base, tiny_splits, packing):
    examples = tiny_splits.sft_train(n=50)
    data = SFTData(tiny_base.tokenizer, examples, SFTConfig(batch_size=4, max_length=96, packing=packing))
    batch = data.next_batch(torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"] != IGNORE_INDEX).any()
    loss, n = batch_loss(tiny_base.model, batch)
    assert torch.isfinite(loss) and n > 0


def test_sft_loss_falls(tiny_base, tiny_splits):
    from transformers import AutoModelForCausalLM

    from embiggen.methods.sft import sft, validation_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_base.path)
    train, val = tiny_splits.sft_train(n=300), tiny_splits.sft_val()[:40]
    cfg = SFTConfig(steps=40, batch_size=8, eval_every=20, max_length=96,
                    optim=OptimConfig(lr=3e-3, warmup_steps=4))
    before = validation_loss(model, SFTData(tiny_base.tokenizer, val, cfg))
    log = sft(model, tiny_base.tokenizer, train, val, cfg, device="cpu", progress=False)
    assert log.val_loss[-1] < before - 0.3


@pytest.mark.parametrize("packing", [False, True])
def test_replay_rows_are_plain_text_with_full_loss(tiny_base, tiny_splits, packing):
    from embiggen.methods.pretrain import tokenize_corpus

    replay = tokenize_corpus(tiny_base.tokenizer, tiny_base.world.pretraining_corpus(50))
    cfg = SFTConfig(batch_size=8, max_length=64, packing=packing, replay_share=0.25)
    data = SFTData(tiny_base.tokenizer, tiny_splits.sft_train(n=40), cfg, replay)
    batch = data.next_batch(torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape[0] == 8
    text_rows = batch["input_ids"][-2:]
    assert torch.equal(batch["labels"][-2:], text_rows)  # every replayed token carries loss
    width = text_rows.shape[1]
    for row in text_rows:  # each row is a contiguous window of the corpus
        hits = [s for s in range(len(replay) - width + 1) if torch.equal(replay[s: s + width], row)]
        assert hits
    loss, n, parts = batch_loss(tiny_base.model, batch)
    assert torch.isfinite(loss) and n >= 2 * (width - 1)
    # the two logged parts, against a plain computation: mean next-token loss over the response
    # tokens of the instruction rows, and over every token of the replayed rows
    assert batch["replay"].tolist() == [False] * 6 + [True] * 2
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "replay")}
    with torch.no_grad():
        logits = tiny_base.model(**inputs, use_cache=False).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    labelled = targets != IGNORE_INDEX
    response = (nll[:6] * labelled[:6]).sum() / labelled[:6].sum()
    text = nll[6:].mean()
    assert parts["response_loss"] == pytest.approx(response.item(), rel=1e-4)
    assert parts["replay_loss"] == pytest.approx(text.item(), rel=1e-4)
    # and the loss trained on is their token-weighted mean
    both = (response * labelled[:6].sum() + text * labelled[6:].numel()) / (labelled[:6].sum() + labelled[6:].numel())
    assert loss.item() == pytest.approx(both.item(), rel=1e-4)


def test_training_with_replay_logs_the_response_and_replay_losses_apart(tiny_base, tiny_splits):
    import copy

    from embiggen.methods.pretrain import tokenize_corpus
    from embiggen.methods.sft import sft

    replay = tokenize_corpus(tiny_base.tokenizer, tiny_base.world.pretraining_corpus(50))
    cfg = SFTConfig(batch_size=8, max_length=64, replay_share=0.25, steps=3, eval_every=3)
    log = sft(copy.deepcopy(tiny_base.model), tiny_base.tokenizer, tiny_splits.sft_train(n=40),
              tiny_splits.sft_val()[:8], cfg, device="cpu", progress=False, replay=replay)
    assert len(log.metrics["response_loss"]) == len(log.metrics["replay_loss"]) == len(log.train_loss) == 3
    # the mixed loss lies between its two parts, step by step
    for mixed, a, b in zip(log.train_loss, log.metrics["response_loss"], log.metrics["replay_loss"]):
        assert min(a, b) - 1e-4 <= mixed <= max(a, b) + 1e-4
