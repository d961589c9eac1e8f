"""Step 2 — instruction tuning: supervised fine-tuning (SFT) on instruction → response pairs.

FLAN (Wei et al. 2021, https://arxiv.org/abs/2109.01652) and Flan-PaLM (Chung et al. 2022,
https://arxiv.org/abs/2210.11416) fine-tune a pretrained language model on many tasks
phrased as instructions. Each example is rendered with the chat template,

    <|user|>\\n{instruction}<|endoftext|><|assistant|>\\n{response}<|endoftext|>

and the model is trained with the same next-token cross-entropy as in pretraining — but
**only on the response tokens** (the prompt and the padding are masked with label -100):

    L(theta) = - sum_{t in response} log p_theta(x_t | x_<t)  /  |response tokens|

Masking the prompt teaches the model to *answer*, not to write instructions; the EOS that
ends every response teaches it to *stop*. With packing, several examples share one row;
their position ids restart at 0 for each example, which Hugging Face models read as
separate sequences (a block-diagonal attention mask), so examples never see each other.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from embiggen.lm.distributed import shard_rows
from embiggen.lm.generate import in_chunks, output_head
from embiggen.lm.lora import add_adapters
from embiggen.lm.tokenizer import chat_prompt, encode
from embiggen.lm.training import TrainLog, train_loop
from embiggen.presets import SFTConfig
from embiggen.utils import pick_device

IGNORE_INDEX = -100  # label value that cross-entropy skips


# ---------------------------------------------------------------------------------------
# Encoding: prompt masked, response (and its EOS) labelled
# ---------------------------------------------------------------------------------------
def encode_example(tokenizer, instruction: str, response: str, max_length: int = 256) -> dict:
    """input_ids of prompt + response + EOS, and labels that are -100 on the prompt."""
    prompt_ids = encode(tokenizer, chat_prompt(tokenizer, instruction))
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def pad_batch(examples: list[dict], pad_token_id: int) -> dict:
    """Right-pad to the longest example; padding is masked in attention and in the labels."""
    longest = max(len(e["input_ids"]) for e in examples)
    ids, labels, mask = [], [], []
    for e in examples:
        n = len(e["input_ids"])
        ids.append(e["input_ids"] + [pad_token_id] * (longest - n))
        labels.append(e["labels"] + [IGNORE_INDEX] * (longest - n))
        mask.append([1] * n + [0] * (longest - n))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def pack_examples(examples: list[dict], max_length: int, pad_token_id: int) -> dict:
    """Greedily pack examples into rows of `max_length` tokens. position_ids restart at 0
    for every example, so attention stays within each example; the tail of a row is padding
    with label -100 (its own short 'sequence')."""
    rows, current = [], []
    for e in examples:
        if current and sum(len(x["input_ids"]) for x in current) + len(e["input_ids"]) > max_length:
            rows.append(current)
            current = []
        current.append(e)
    if current:
        rows.append(current)
    ids, labels, positions = [], [], []
    for row in rows:
        r_ids, r_labels, r_pos = [], [], []
        for e in row:
            r_ids += e["input_ids"]
            r_labels += e["labels"]
            r_pos += list(range(len(e["input_ids"])))
        pad = max_length - len(r_ids)
        ids.append(r_ids + [pad_token_id] * pad)
        labels.append(r_labels + [IGNORE_INDEX] * pad)
        positions.append(r_pos + list(range(pad)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}


# ---------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------
def completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over labelled tokens (labels aligned with the inputs; shifted here).
    Returns (loss, number of labelled tokens). A batch with no labelled token gives 0, not NaN."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.clamp(min=0).reshape(-1),
                          reduction="none").view_as(labels)
    n = mask.sum()
    return (nll * mask).sum() / n.clamp(min=1), n


def chunked_token_nll(model, inputs: dict, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """-log p(labels[:, t + 1] | tokens up to t) at every position, shape (B, T - 1), 0 where the
    label is -100 — computed without the whole (B, T, vocabulary) float32 logits: from the last
    hidden states, `chunk` positions at a time (`generate.in_chunks`: each chunk's logits are
    recomputed in the backward pass instead of kept). Memory: chunk x vocabulary floats instead
    of B x T x vocabulary, which is what a pretrained model's 50k-150k vocabulary needs. The logits
    are the model's own (`generate.output_head`: Granite's scaling, Gemma's soft-capping)."""
    targets = labels[:, 1:]
    head = output_head(model)
    hidden = model.base_model(**inputs, use_cache=False).last_hidden_state[:, :-1]
    nll = in_chunks(lambda h, y: F.cross_entropy(head(h).float(), y.clamp(min=0), reduction="none"), hidden, targets,
                    chunk)
    return nll.view_as(targets) * (targets != IGNORE_INDEX)


def batch_loss(model, batch: dict, logprob_chunk: int = 0):
    """The completion loss of a batch: (loss, labelled tokens). A batch with replayed
    pretraining rows (`batch["replay"]` marks them) also returns the two parts of that one
    loss, the mean over response tokens and over replayed text, to be logged apart. With
    `logprob_chunk`, the token losses come from `chunked_token_nll` (the same numbers, less memory)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "replay")}
    if logprob_chunk:
        nll = chunked_token_nll(model, inputs, batch["labels"], logprob_chunk)
        counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)

        def mean(rows):
            return nll[rows].sum() / counts[rows].sum().clamp(min=1)

        loss, n = nll.sum() / counts.sum().clamp(min=1), counts.sum()
        if "replay" not in batch:
            return loss, n
        rows = batch["replay"]
        return loss, n, {"response_loss": mean(~rows).item(), "replay_loss": mean(rows).item()}
    logits = model(**inputs, use_cache=False).logits
    loss, n = completion_loss(logits, batch["labels"])
    if "replay" not in batch:
        return loss, n
    with torch.no_grad():
        rows = batch["replay"]
        parts = {"response_loss": completion_loss(logits[~rows], batch["labels"][~rows])[0].item(),
                 "replay_loss": completion_loss(logits[rows], batch["labels"][rows])[0].item()}
    return loss, n, parts


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
class SFTData:
    """Encoded examples and how to draw a batch of them (padded or packed).

    With `replay` (a 1-D tensor of pretraining token ids) and cfg.replay_share > 0, that
    share of each batch's rows is plain pretraining text with the full next-token loss —
    "replay", which keeps fine-tuning from overwriting what pretraining stored (the same
    idea as InstructGPT's pretraining mix, Ouyang et al. 2022, section 3.5)."""

    def __init__(self, tokenizer, examples, cfg: SFTConfig, replay: torch.Tensor | None = None,
                 encode=encode_example, sharded: bool = True):
        self.cfg = cfg
        self.sharded = sharded  # on several processes, each batch is split between them (lm/distributed.py)
        self.pad = tokenizer.pad_token_id
        self.encoded = [encode(tokenizer, e.instruction, e.answer, cfg.max_length) for e in examples]
        self.replay = replay if cfg.replay_share > 0 else None
        self.n_replay = round(cfg.batch_size * cfg.replay_share) if self.replay is not None else 0
        sample = self.encoded[:200]  # for packing: how many examples fill a row, on average
        self.mean_len = sum(len(e["input_ids"]) for e in sample) / max(1, len(sample))

    def next_batch(self, generator: torch.Generator) -> dict:
        cfg = self.cfg
        rows = cfg.batch_size - self.n_replay
        if not cfg.packing:
            idx = torch.randint(len(self.encoded), (rows,), generator=generator).tolist()
            batch = pad_batch([self.encoded[i] for i in idx], self.pad)
        else:  # packing: draw enough examples to fill the rows with max_length tokens each
            n = max(rows, int(rows * cfg.max_length / self.mean_len))
            idx = torch.randint(len(self.encoded), (n,), generator=generator).tolist()
            packed = pack_examples([self.encoded[i] for i in idx], cfg.max_length, self.pad)
            batch = {k: v[:rows] for k, v in packed.items()}
        if self.n_replay:
            batch = self._add_replay(batch, generator)
        return shard_rows(batch) if self.sharded else batch  # on several processes, this rank's rows

    def _add_replay(self, batch: dict, generator: torch.Generator) -> dict:
        width = batch["input_ids"].shape[1]
        starts = torch.randint(len(self.replay) - width, (self.n_replay,), generator=generator).tolist()
        text = torch.stack([self.replay[s: s + width] for s in starts])
        out = {"input_ids": torch.cat([batch["input_ids"], text]), "labels": torch.cat([batch["labels"], text]),
               "replay": torch.arange(len(text) + len(batch["input_ids"])) >= len(batch["input_ids"])}
        if "position_ids" in batch:
            out["position_ids"] = torch.cat([batch["position_ids"], torch.arange(width).expand(self.n_replay, -1)])
        else:
            out["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(text)])
        return out


@torch.no_grad()
def validation_loss(model, data: SFTData, batch_size: int = 64) -> float:
    """Completion loss over all validation examples (padded, in order)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(data.encoded), batch_size):
        batch = {k: v.to(device) for k, v in pad_batch(data.encoded[i: i + batch_size], data.pad).items()}
        loss, n = batch_loss(model, batch)
        total += loss.item() * n.item()
        count += n.item()
    model.train(was_training)
    return total / max(count, 1)


def sft(model, tokenizer, train_examples, val_examples, cfg: SFTConfig, device=None, seed: int = 0,
        callback=None, progress: bool = True, resume_dir: Path | None = None, desc: str = "sft",
        replay: torch.Tensor | None = None, encode=encode_example) -> TrainLog:
    """Fine-tune `model` (any causal LM) on instruction examples with the completion-only loss
    (plus replayed pretraining text, if `replay` is given and cfg.replay_share > 0). `encode`
    turns an example into ids and labels (`tools.encode_tool_example` keeps results out of the loss).
    With cfg.optim.lora.rank > 0 only low-rank adapters train (`lora.add_adapters`, in place)."""
    device = device or pick_device()
    if cfg.optim.lora.rank:
        add_adapters(model, cfg.optim.lora)
    train, val = SFTData(tokenizer, train_examples, cfg, replay, encode), SFTData(tokenizer, val_examples, cfg,
                                                                                  encode=encode)
    return train_loop(model, train.next_batch, lambda m, batch: batch_loss(m, batch, cfg.logprob_chunk), cfg,
                      val_loss_fn=lambda m: validation_loss(m, val),
                      device=device, seed=seed, callback=callback, progress=progress, resume_dir=resume_dir, desc=desc)
