"""Turning next-token probabilities into text: greedy decoding and sampling.

A language model gives a distribution p(x_t | x_<t) over its vocabulary. Decoding picks a
token, appends it and repeats. Greedy decoding takes the most likely token; sampling draws
from the distribution after reshaping it (Holtzman et al. 2019, "The Curious Case of
Neural Text Degeneration", https://arxiv.org/abs/1904.09751):

* temperature T:   p_i ∝ exp(logit_i / T) — low T sharpens, high T flattens;
* top-k:           keep only the k most likely tokens;
* top-p (nucleus): keep the smallest set of tokens whose probability adds up to >= p.

`filter_logits` is that recipe written out; `generate` runs batched decoding through
Hugging Face's `generate`, which applies the same three steps. The last section samples
chat answers *with their log-probabilities* under the distribution they were drawn from
(logits / T): PPO's rollouts, best-of-n's pools and every KL estimate use it.
"""

from __future__ import annotations

import contextvars
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm
from transformers import GenerationConfig

from embiggen.lm.distributed import all_finished, is_split
from embiggen.lm.tokenizer import chat_prompt, encode, encode_batch


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Scale by temperature, then set every token outside top-k / top-p to -inf."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy decoding for 0), got {temperature}")
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens *before* it already reach top_p (the first always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def next_token_distribution(model, tokenizer, text: str, k: int = 10, temperature: float = 1.0,
                            top_k: int | None = None, top_p: float | None = None) -> list[tuple[str, float]]:
    """The `k` most likely next tokens after `text`, with probabilities after filtering."""
    ids = torch.tensor([encode(tokenizer, text)])
    if ids.numel() == 0:  # an empty prefix means "the start of a document"
        ids = torch.tensor([[tokenizer.eos_token_id]])
    logits = model(input_ids=ids.to(_device(model))).logits[0, -1].float()
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    values, indices = torch.topk(probs, min(k, probs.numel()))
    return [(tokenizer.decode([i]), v) for i, v in zip(indices.tolist(), values.tolist())]


_PROGRESS = contextvars.ContextVar("generation_progress", default=None)


@contextmanager
def generation_progress(label: str | None):
    """Within this block, every batched generation that shows no progress bar of its own shows
    one labelled `label` (None: none): `embiggen run` measuring a stage says what it is doing."""
    token = _PROGRESS.set(label)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@contextmanager
def plain_generation(model):
    """Decode exactly as asked, nothing more. A pretrained model's `generation_config` often
    sets its own defaults: a repetition penalty, top-k or top-p, a minimum length. `generate`
    would apply them on top of what we ask for, and then the tokens are drawn from another
    distribution than logits / T — the one PPO's log-probs, best-of-n's pools and every KL
    estimate compute. So, while generating, the model's config is set aside for a bare one that
    keeps only its special tokens; what a caller wants (temperature, top-k, top-p) it passes."""
    saved = model.generation_config
    model.generation_config = GenerationConfig(bos_token_id=saved.bos_token_id, eos_token_id=saved.eos_token_id,
                                               pad_token_id=saved.pad_token_id)
    try:
        yield model
    finally:
        model.generation_config = saved


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, greedy: bool = True,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, batch_size: int = 64, desc: str | None = None) -> list[torch.Tensor]:
    """Continue each prompt; return the new token ids of each (generation stops at EOS; a
    finished sequence is padded after its EOS up to the longest in its batch). With `desc`,
    a progress bar over the batches."""
    if isinstance(prompts, str):
        raise TypeError("generate() takes a list of prompts; wrap a single prompt in a list")
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    sampling = {} if greedy else {"temperature": temperature, "top_k": top_k or 0, "top_p": top_p or 1.0}
    outputs, desc = [], desc or _PROGRESS.get()
    sharded = is_split(model)  # a sharded layer's forward pass needs every rank: all step until all are done
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=desc is None, leave=False):
        chunk = prompts[start: start + batch_size]
        enc = encode_batch(tokenizer, chunk).to(_device(model))
        with plain_generation(model):
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=not greedy,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 synced_gpus=sharded, **sampling)
        outputs.extend(out[:, enc["input_ids"].shape[1]:].cpu())
    model.train(was_training)
    return outputs


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, greedy: bool = True,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, batch_size: int = 64, skip_special_tokens: bool = True) -> list[str]:
    """Continue each prompt; return only the new text. Generation stops at EOS."""
    ids = generate_ids(model, tokenizer, prompts, max_new_tokens, greedy, temperature, top_k, top_p, seed, batch_size)
    return [tokenizer.decode(x, skip_special_tokens=skip_special_tokens) for x in ids]


def decode_responses(tokenizer, responses) -> tuple[list[str], list[bool]]:
    """The one way every stage turns sampled response tokens into text: cut at the first EOS,
    decode what came before it (other special tokens the model wrote are kept, so the text
    re-encodes to the same tokens), strip surrounding space; and whether each response
    ended with EOS. Preference collection, PPO rollouts, best-of-n and evaluation all call
    this, so the labeler and the reward model always judge the same text."""
    texts, finished = [], []
    for ids in responses:
        ids = [int(i) for i in ids]
        done = tokenizer.eos_token_id in ids
        if done:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        ids = [i for i in ids if i != tokenizer.pad_token_id]
        texts.append(tokenizer.decode(ids, skip_special_tokens=False).strip())
        finished.append(done)
    return texts, finished


def chat_responses(model, tokenizer, instructions: list[str], max_new_tokens: int = 32, greedy: bool = True,
                   temperature: float = 1.0, seed: int | None = None, batch_size: int = 64,
                   desc: str | None = None) -> tuple[list[str], list[bool]]:
    """Answers of a chat model to `instructions` (chat template applied), and whether each
    answer ended with EOS (False: it hit `max_new_tokens` first). `desc`: a progress bar."""
    ids = generate_ids(model, tokenizer, [chat_prompt(tokenizer, x) for x in instructions],
                       max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, seed=seed,
                       batch_size=batch_size, desc=desc)
    return decode_responses(tokenizer, ids)


# ---------------------------------------------------------------------------------------
# Sampled responses with their log-probabilities (PPO's rollouts, best-of-n, KL estimates)
# ---------------------------------------------------------------------------------------
def position_ids_from(mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only (0, 1, 2, ... from each sequence's first token), so
    left padding never shifts a sequence's positions."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def response_logprobs(logits: torch.Tensor, responses: torch.Tensor,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_t | x, y_<t) of the response tokens under logits / temperature, and the
    entropy of that distribution at each response position. `logits[:, t]` are the logits
    that predict `responses[:, t]` (the positions just before each response token)."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logprobs = logp_all.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


def response_mask(responses: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1 on response tokens up to and including the first EOS; and whether each response ended."""
    is_eos = responses == eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).long(), is_eos.any(1)


@torch.no_grad()
def sample_episodes(lm, tokenizer, instructions: list[str], max_new_tokens: int, temperature: float) -> dict:
    """Sample one response per instruction (chat template, left padding, stop at EOS) and
    return everything the log-prob passes need: sequences, attention mask and position ids
    over prompt + response, the response tokens, their mask and whether each ended."""
    tokenizer.padding_side = "left"
    device = next(lm.parameters()).device
    enc = encode_batch(tokenizer, [chat_prompt(tokenizer, x) for x in instructions]).to(device)
    prompt_len = enc["input_ids"].shape[1]
    with plain_generation(lm):  # sampled from exactly logits / T, the distribution the log-probs are computed from
        sequences = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, synced_gpus=is_split(lm))
    responses = sequences[:, prompt_len:]
    mask, finished = response_mask(responses, tokenizer.eos_token_id)
    attention_mask = torch.cat([enc["attention_mask"], mask], dim=1)
    return {"sequences": sequences, "attention_mask": attention_mask, "position_ids": position_ids_from(attention_mask),
            "prompt_len": prompt_len, "responses": responses, "mask": mask, "finished": finished}


def draw_tokens(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row from `probs` (rows of a distribution), by inverting its cumulative sum at
    the row's uniform draw u in [0, 1): the first token whose cumulative probability exceeds u.
    Each row's token depends only on its own probabilities and its own u, not on the rows sampled
    beside it, so a rollout split over processes draws the tokens one process draws. The sum is
    taken in float64 (float32 on Apple's MPS, which has no float64): in float32 a 50k-token
    vocabulary's rounding would move probability mass between neighbouring tokens."""
    cdf = probs.to(torch.float32 if probs.device.type == "mps" else torch.float64).cumsum(-1)
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def prompt_width(tokenizer, instructions: list[str]) -> int:
    """How many tokens the longest of `instructions` takes with the chat template: the width a
    batch of them is left-padded to (`encode_batch`)."""
    return max(len(encode(tokenizer, chat_prompt(tokenizer, x))) for x in instructions)


@torch.no_grad()
def sample_grouped_episodes(lm, tokenizer, instructions: list[str], group_size: int, max_new_tokens: int,
                            temperature: float = 1.0, greedy: bool = False, uniforms: torch.Tensor | None = None,
                            width: int | None = None, synced: bool = False) -> dict:
    """`group_size` sampled answers to each instruction, as `sample_episodes` returns them for the
    instructions repeated (answer j of instruction i is row i * group_size + j). The G answers of
    a prompt share it, so the prompt is read once: its keys and values are computed once, copied
    G times (the KV cache), and decoding goes on one token per step from there, each token drawn
    from softmax(logits / T) — the distribution `generate` samples from with top-k and top-p off.
    Reading each prompt once instead of G times is most of the sampling time of short answers.

    Token t of answer i is drawn with the uniform `uniforms[i, t]` (`draw_tokens`; by default
    drawn from torch's global generator): PPO and GRPO draw the whole rollout's uniforms from one
    seeded generator and hand each process the rows of its share. `width` left-pads the prompts to
    that many tokens (the whole rollout's `prompt_width`) so that every share's tensors line up.
    `synced` keeps stepping until every process's answers have ended (a sharded model's forward
    pass needs every process). `greedy` takes the most likely token instead (for testing)."""
    tokenizer.padding_side = "left"
    device = next(lm.parameters()).device
    enc = encode_batch(tokenizer, [chat_prompt(tokenizer, x) for x in instructions])
    if width is not None and width > enc["input_ids"].shape[1]:  # more left padding: the whole rollout's width
        extra = width - enc["input_ids"].shape[1]
        enc = {"input_ids": F.pad(enc["input_ids"], (extra, 0), value=tokenizer.pad_token_id),
               "attention_mask": F.pad(enc["attention_mask"], (extra, 0), value=0)}
    enc = {k: v.to(device) for k, v in enc.items()}
    n_answers = len(instructions) * group_size
    if uniforms is None:
        uniforms = torch.rand(n_answers, max_new_tokens)
    if uniforms.shape != (n_answers, max_new_tokens):
        raise ValueError(f"uniforms must be one row per answer and one column per token: {(n_answers, max_new_tokens)}"
                         f", got {tuple(uniforms.shape)}")
    uniforms = uniforms.to(device)
    positions = position_ids_from(enc["attention_mask"])
    out = lm(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=positions,
             use_cache=True, logits_to_keep=1)
    cache = out.cache
    cache.batch_repeat_interleave(group_size)  # the prompt's keys and values, once per answer
    logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)
    prompt_ids, prompt_mask = (t.repeat_interleave(group_size, dim=0) for t in (enc["input_ids"], enc["attention_mask"]))
    mask, positions = prompt_mask, positions[:, -1:].repeat_interleave(group_size, dim=0)
    finished = torch.zeros(len(prompt_ids), dtype=torch.bool, device=device)
    tokens = []
    for t in range(max_new_tokens):
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        token = probs.argmax(-1) if greedy else draw_tokens(probs, uniforms[:, t])
        token = token.masked_fill(finished, tokenizer.pad_token_id)  # an answer that ended only pads
        tokens.append(token)
        finished |= token == tokenizer.eos_token_id
        if t == max_new_tokens - 1 or (all_finished(bool(finished.all())) if synced else bool(finished.all())):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions + 1
        out = lm(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=positions, cache=cache,
                 use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
    responses = torch.stack(tokens, dim=1)
    response_tokens, ended = response_mask(responses, tokenizer.eos_token_id)
    attention_mask = torch.cat([prompt_mask, response_tokens], dim=1)
    return {"sequences": torch.cat([prompt_ids, responses], dim=1), "attention_mask": attention_mask,
            "position_ids": position_ids_from(attention_mask), "prompt_len": prompt_ids.shape[1],
            "responses": responses, "mask": response_tokens, "finished": ended}


def widen_responses(episodes: dict, width: int, pad_token_id: int) -> dict:
    """`episodes` with their responses right-padded to `width` tokens (padding is masked out
    everywhere): every process's share of a rollout as wide as the longest share's."""
    extra = width - episodes["responses"].shape[1]
    if extra <= 0:
        return episodes
    responses = F.pad(episodes["responses"], (0, extra), value=pad_token_id)
    mask = F.pad(episodes["mask"], (0, extra), value=0)
    attention_mask = F.pad(episodes["attention_mask"], (0, extra), value=0)
    return {**episodes, "sequences": F.pad(episodes["sequences"], (0, extra), value=pad_token_id),
            "attention_mask": attention_mask, "position_ids": position_ids_from(attention_mask),
            "responses": responses, "mask": mask}


def in_chunks(fn, hidden: torch.Tensor, targets: torch.Tensor, chunk: int):
    """`fn(hidden states, targets)` over the flattened positions `chunk` at a time, the results
    concatenated (a tensor, or each tensor of a tuple): only chunk x vocabulary float32 logits
    exist at once. With gradients on, each chunk's logits are recomputed in the backward pass
    instead of kept (activation checkpointing). `fn` must treat positions independently."""
    flat_h, flat_y = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    run = (lambda h, y: checkpoint(fn, h, y, use_reentrant=False)) if torch.is_grad_enabled() else fn
    parts = [run(flat_h[i: i + chunk], flat_y[i: i + chunk]) for i in range(0, len(flat_y), chunk)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(values) for values in zip(*parts))
    return torch.cat(parts)


def output_head(lm):
    """The map from `lm`'s last hidden states to the logits its own `forward` returns, for the
    chunked paths that apply it themselves: the output embedding, then the transform some
    architectures apply after it — Granite divides by `logits_scaling`, Cohere multiplies by
    `logit_scale`, Gemma 2 and 3 soft-cap at `final_logit_softcapping` (c tanh(z / c)). Skip
    it and PPO's KL and DPO's margins are computed for a distribution other than the sampled
    one. Checked once per model against its own forward on a few tokens: an architecture that
    transforms its logits some other way is refused, by name, rather than silently mis-scored."""
    linear, config = lm.get_output_embeddings(), lm.config
    divide = getattr(config, "logits_scaling", None)      # Granite, GraniteMoe
    multiply = getattr(config, "logit_scale", None)       # Cohere, Cohere2
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2, Gemma 3

    def head(hidden: torch.Tensor) -> torch.Tensor:
        logits = linear(hidden)
        if divide is not None and divide != 1:
            logits = logits / divide
        if multiply is not None and multiply != 1:
            logits = logits * multiply
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    if linear not in _CHECKED_HEADS:
        _check_head(lm, head)
        _CHECKED_HEADS.add(linear)
    return head


#: The output embeddings whose model `output_head` has checked (weakly held: a model's going frees them).
_CHECKED_HEADS: weakref.WeakSet = weakref.WeakSet()


@torch.no_grad()
def _check_head(lm, head) -> None:
    """`head(last hidden state)` must give `lm`'s own logits (float32, no autocast, eval mode)."""
    device, was_training = next(lm.parameters()).device, lm.training
    ids = torch.arange(4, device=device)[None] % lm.config.vocab_size
    lm.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            own = lm(input_ids=ids, use_cache=False).logits.float()
            mine = head(lm.base_model(input_ids=ids, use_cache=False).last_hidden_state).float()
    finally:
        lm.train(was_training)
    if not torch.allclose(own, mine, rtol=1e-4, atol=1e-4 * (1 + own.abs().max().item())):
        raise ValueError(f"{type(lm).__name__} transforms its logits in a way the chunked log-probabilities do not "
                         f"know (largest difference {(own - mine).abs().max().item():.3g}): set logprob_chunk=0")


def chunked_response_logprobs(head, hidden: torch.Tensor, responses: torch.Tensor, temperature: float,
                              chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`response_logprobs(head(hidden), responses, temperature)` — the same numbers — `chunk`
    positions at a time (`in_chunks`). `hidden[:, t]` is the last hidden state that predicts
    `responses[:, t]`; `head` maps it to the model's logits (`output_head`)."""
    logprobs, entropy = in_chunks(lambda h, y: response_logprobs(head(h), y, temperature), hidden, responses, chunk)
    return logprobs.view_as(responses), entropy.view_as(responses)


#: `episode_logprobs` keeps at most this many float32 logits at once by default (256 MB): the
#: embedded model's batches stay far below it, a 150k vocabulary goes in chunks of ~440 positions.
MAX_LOGITS = 2 ** 26


def answer_logprobs(lm, episodes: dict, temperature: float, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_t | x, y_<t) of the sampled response tokens of `episodes` (as `sample_episodes`
    returns them, or any rows of them) under `lm`, and the entropy of pi at each response
    position; with gradients if they are on. With `chunk`, from the last hidden states a chunk
    of positions at a time; by default, in chunks only where all logits at once would be more
    than `MAX_LOGITS` floats."""
    n = episodes["responses"].shape[1]
    if chunk is None:
        vocab = lm.get_output_embeddings().out_features
        chunk = 0 if episodes["responses"].numel() * vocab <= MAX_LOGITS else max(1, MAX_LOGITS // vocab)
    inputs = {"input_ids": episodes["sequences"], "attention_mask": episodes["attention_mask"],
              "position_ids": episodes["position_ids"], "use_cache": False}
    if chunk:
        hidden = lm.base_model(**inputs).last_hidden_state[:, -(n + 1):-1]
        return chunked_response_logprobs(output_head(lm), hidden, episodes["responses"], temperature,
                                         chunk)
    logits = lm(**inputs, logits_to_keep=n + 1).logits[:, :-1]
    return response_logprobs(logits, episodes["responses"], temperature)


@torch.no_grad()
def episode_logprobs(lm, episodes: dict, temperature: float, chunk: int | None = None) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of the sampled response tokens under a (frozen) language model
    (`answer_logprobs` without gradients or entropies)."""
    return answer_logprobs(lm, episodes, temperature, chunk)[0]
