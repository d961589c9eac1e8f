"""Low-rank adapters: fine-tuning a real model with a sliver of its weights.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"
(https://arxiv.org/abs/2106.09685). A fine-tuned weight matrix differs from the pretrained one
by an update that is close to low rank. So freeze W0 and learn that update as a product of two
thin matrices:

    h = W0 x + (alpha / r) B A x,      A: r x d_in,  B: d_out x r,  r << d_in, d_out

A starts random and B at zero, so training starts exactly at the pretrained model. Only A and
B train (and the new heads: the reward model's score, PPO's value head): for SmolLM2-135M with
r = 16 on every linear layer of the blocks, 4.9 M of 139.4 M weights (3.5%), so the optimiser's
two moments and the gradients shrink by as much. What LoRA does *not* save is the activations
of the forward pass, which grow with the batch (`gradient_checkpointing` is for those):
`benchmarks/lora_memory.py` measured SFT steps of SmolLM2 on a 2-core CPU at 1,497 MB against
2,900 MB for full fine-tuning with one sequence of 128 tokens, but 3,818 MB against 4,347 MB
with four of 256.

Two things follow for RLHF. The reference model of PPO, GRPO and DPO is the same network with
the adapters switched off (`adapters_disabled`): no second copy of the weights. And an adapter
can be folded back into its matrix, W = W0 + (alpha / r) B A (`merge_adapters`): the merged
model is an ordinary one, which is what the next stage starts from and what `embiggen sample`
and `chat` load; the adapter itself is saved beside it as safetensors (`save_adapters`).

The layers are Hugging Face's `peft` (`inject_adapter_in_model`), injected in place: the model
keeps its class, its `generate` and its `base_model`, so every stage's code runs on it as is.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from transformers.pytorch_utils import Conv1D

from embiggen.presets import LoRAConfig

#: Heads that are new in a stage and train in full (never wrapped in an adapter).
NEW_HEADS = ("score", "value_head")


def add_adapters(model, cfg: LoRAConfig):
    """Inject LoRA adapters into `model` in place (its linear layers named in cfg.target_modules,
    or all of them but the output layer) and freeze everything else but a new head; returns it."""
    if cfg.rank < 1:
        raise ValueError(f"LoRA needs rank >= 1, got {cfg.rank}")
    targets = list(cfg.target_modules) if cfg.target_modules else "all-linear"
    heads = [name for name in NEW_HEADS if isinstance(getattr(model, name, None), torch.nn.Module)]
    conv1d = any(isinstance(m, Conv1D) for m in model.modules())  # GPT-2 stores its linear maps transposed
    config = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=targets,
                        exclude_modules=heads if targets == "all-linear" and heads else None, fan_in_fan_out=conv1d)
    inject_adapter_in_model(config, model)
    model._embiggen_lora = {"rank": cfg.rank, "alpha": cfg.alpha, "target_modules": targets}
    for name in heads:
        getattr(model, name).requires_grad_(True)
    if not any(adapter_layers(model)):
        raise ValueError(f"no layer of {type(model).__name__} matched LoRA's target_modules {targets!r}")
    return model


def adapter_layers(model):
    """The adapter-carrying layers of `model` (peft's tuner layers)."""
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def has_adapters(model) -> bool:
    return bool(getattr(model, "_embiggen_lora", None)) and any(adapter_layers(model))


@contextmanager
def adapters_disabled(model):
    """`model` as it was before fine-tuning — W0 alone — for the duration: the reference policy
    of PPO, GRPO and DPO without a second copy of the weights."""
    layers = adapter_layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)  # trainable again, as before


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapters' weights (A and B of every layer), and the new heads', by name."""
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    for name in NEW_HEADS:
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            state.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    return state


def save_adapters(folder: Path, model) -> None:
    """`adapter_model.safetensors` and `adapter_config.json` into `folder`, as peft names them
    (`training.save_checkpoint` calls it inside the temporary folder it renames when done)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(folder / "adapter_model.safetensors"))
    lora = model._embiggen_lora
    config = {"peft_type": "LORA", "r": lora["rank"], "lora_alpha": lora["alpha"], "lora_dropout": 0.0,
              "target_modules": lora["target_modules"], "base_model_class": type(model).__name__,
              "trained_heads": [name for name in NEW_HEADS if isinstance(getattr(model, name, None), torch.nn.Module)]}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1))


def merge_adapters(model):
    """Fold every adapter into its matrix, W = W0 + (alpha / r) B A, and put the plain layers
    back: an ordinary model again, every weight trainable (in place; returns it)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge()
                setattr(module, child_name, child.get_base_layer())
    model.__dict__.pop("_embiggen_lora", None)
    model.requires_grad_(True)
    return model


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, all) parameter counts, each shared tensor counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
