"""The model: a small Llama-style decoder built from a preset, or any Hugging Face causal LM.

The embedded default is `transformers.LlamaForCausalLM` (RMSNorm, rotary position
embeddings, SwiGLU MLP — the LLaMA recipe of Touvron et al. 2023) at a size that trains on
a laptop CPU in minutes. Because it *is* a Hugging Face model, everything downstream (SFT,
reward model, PPO) works the same on any other causal LM loaded with `load_pretrained`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from embiggen.presets import ModelConfig

DEFAULT_MODEL_HINT = ("the embedded default needs no download: use `embiggen.chain.train_or_load_base()` "
                      "(CLI: `embiggen run --stages base`), or pass a local folder saved with save_pretrained")


def build_model(cfg: ModelConfig, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised Llama-style causal LM with `cfg`'s shape and `tokenizer`'s vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,  # input and output embeddings share weights, as in GPT-2
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_pretrained(name_or_path: str | Path, device: torch.device | str = "cpu", dtype=torch.float32):
    """Load any Hugging Face causal LM and its tokenizer by hub name or local path.

    The weights are float32 whatever dtype the checkpoint was stored in (most hub models are
    bf16, which transformers 5 would keep): they are the master weights every stage trains,
    and in bf16 an update smaller than 1/256 of a weight rounds away — one AdamW step at the
    `pretrained` preset's PPO learning rate would change about 2% of them. Speed comes from
    autocast instead (`OptimConfig.bf16`). Only safetensors weights are loaded,
    `trust_remote_code` stays off, and nothing is downloaded when the model is not already on
    disk or in the local Hugging Face cache (set ``HF_HUB_OFFLINE=0`` yourself if you do want
    downloads)."""
    kwargs = dict(use_safetensors=True, trust_remote_code=False)
    offline = os.environ.get("HF_HUB_OFFLINE", "1") != "0"
    if offline:
        kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False,
                                                  **({"local_files_only": True} if offline else {}))
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise OSError(f"could not load the causal LM {str(name_or_path)!r} offline ({exc.__class__.__name__}: "
                      f"{str(exc).splitlines()[0]}). Embiggen downloads nothing at run time; "
                      f"{DEFAULT_MODEL_HINT}.") from exc
    ready_for_chat(model, tokenizer, name=str(name_or_path))
    return model.to(device), tokenizer


def context_length(model) -> int | None:
    """The longest sequence a causal LM reads (its config's `max_position_embeddings`, GPT-2's
    `n_positions`), or None where the config does not say."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_context(model, lengths: dict[str, int], name: str = "this model") -> None:
    """Refuse, naming every setting to lower, a preset whose sequences are longer than the
    model's context: a model with learned positions (GPT-2) would fail deep inside a stage, and
    rotary positions past the trained context quietly give worse log-probabilities."""
    context = context_length(model)
    if context is None:
        return
    too_long = {key: n for key, n in lengths.items() if n > context}
    if too_long:
        settings = ", ".join(f"{key}={n}" for key, n in too_long.items())
        raise ValueError(f"{name} reads at most {context} tokens, but the preset asks for {settings}: lower "
                         f"{'it' if len(too_long) == 1 else 'them'} to {context} or less (a Preset is a frozen "
                         f"dataclass: dataclasses.replace builds a changed copy)")


#: For a tokenizer without a chat template (a base model such as GPT-2): plain role labels,
#: each assistant turn ended by the tokenizer's EOS, which is where generation stops.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ 'Assistant:\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ message['role'] | capitalize + ':\n' + message['content'] + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:\n' }}{% endif %}"
)


def ready_for_chat(model, tokenizer, name: str = "this model") -> None:
    """What every stage assumes of a model and its tokenizer, made true in place: a pad token
    (the EOS where the tokenizer has none, as for GPT-2), known to the model's config and its
    generation config too (a reward model's head and batched generation need it), left
    padding, and a chat template (`FALLBACK_CHAT_TEMPLATE` where the tokenizer has none, with
    a warning saying so)."""
    if tokenizer.eos_token is None:
        raise ValueError(f"{name}: its tokenizer has no EOS token, so an answer could never end")
    if tokenizer.pad_token is None:  # many causal LMs ship without one
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not tokenizer.chat_template:
        warnings.warn(f"{name}: its tokenizer has no chat template; using Embiggen's plain one "
                      f"('User:' / 'Assistant:' turns, each answer ended by {tokenizer.eos_token!r})", stacklevel=2)
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


@torch.no_grad()
def attention_weights(model, tokenizer, text: str) -> tuple[list[str], torch.Tensor]:
    """The tokens of `text` and every head's attention pattern on it: a tensor of shape
    (layers, heads, query position, key position) whose rows sum to 1. Row t is what position
    t, predicting token t+1, reads from the positions up to t (Vaswani et al. 2017, "Attention
    Is All You Need": softmax(Q K^T / sqrt(d)) with the causal mask). The fused attention
    kernels never form these weights, so the model switches to the plain ("eager") one for the
    call and back afterwards."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
    before = model.config._attn_implementation
    was_training = model.training
    model.eval()
    model.set_attn_implementation("eager")
    try:
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(before)
        model.train(was_training)
    return tokenizer.convert_ids_to_tokens(ids[0].tolist()), torch.stack([a[0] for a in out.attentions]).float().cpu()
