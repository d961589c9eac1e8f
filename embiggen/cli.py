"""The `embiggen` command.

    embiggen run [--preset P] [--stages base] [--out DIR]   # train or load, print the report card
    embiggen run --experiments                               # ... and the notebooks' experiments too
    embiggen sample --model base "Alma Brook lives in"       # continue a prefix
    embiggen chat --model sft                                # ask the instruction-tuned model
    embiggen chat --model ppo                                # ask the RLHF-aligned model
    embiggen chat --model tools                              # a model that calls a calculator and a counter
    embiggen config --stage ppo                              # every knob of a stage, its value and what it does
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import is_dataclass

import transformers

from .experiments import pretrain_experiments
from .generate import generate
from .model import load_pretrained
from .pipeline import STAGES, default_out, load_stage, report_card, run
from .presets import PRESETS, describe, get_preset
from .tokenizer import chat_prompt
from .tools import generate_with_tools
from .utils import pick_device, set_threads

#: the stages whose model is a language model `sample` and `chat` can use
LANGUAGE_MODELS = [name for name, stage in STAGES.items() if stage.language_model]


def _cmd_run(args) -> int:
    report = run(args.preset, args.stages, args.out, progress=not args.quiet, base=args.base)
    print(report_card(report))
    if args.experiments:
        seconds = pretrain_experiments(get_preset(args.preset, args.base), progress=not args.quiet)
        print("the notebooks' experiments are in the cache: "
              + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()))
    out = args.out or default_out(get_preset(args.preset, args.base))
    print(f"\nwrote {out}/report.json and {out}/report.md")
    return 0


def load_model_by_name(name: str, preset=None):
    """A stage's name ('base', 'sft', 'ppo') means that embedded model, trained or loaded from the
    cache; anything else is a Hugging Face name or local path."""
    if name in LANGUAGE_MODELS:
        trained = load_stage(get_preset(preset), name)
        return trained.model, trained.tokenizer
    return load_pretrained(name, device=pick_device())


def _cmd_sample(args) -> int:
    if not args.prefix.strip():
        print("error: give a non-empty prefix to continue", file=sys.stderr)
        return 2
    model, tokenizer = load_model_by_name(args.model, args.preset)
    greedy = args.temperature == 0
    outs = generate(model, tokenizer, [args.prefix] * (1 if greedy else args.n), max_new_tokens=args.max_new_tokens,
                    greedy=greedy, temperature=args.temperature or 1.0, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed)
    for i, text in enumerate(outs, 1):
        print(f"[{i}] {args.prefix}{text}")
    return 0


def chat_reply(model, tokenizer, message: str, max_new_tokens: int = 48, tools: bool = False) -> str:
    """One answer to one message (our models are trained on single-turn chats). With `tools`,
    the calls the model writes are run (`embiggen.tools`), and each is shown on its own line
    above the answer, with the error where one failed."""
    if not tools:
        return generate(model, tokenizer, [chat_prompt(tokenizer, message)], max_new_tokens=max_new_tokens)[0].strip()
    transcript = generate_with_tools(model, tokenizer, [message], max_new_tokens=max(max_new_tokens, 64))[0]
    lines = [f"  [tool] {c.name}({c.args}) -> {c.result}" + (f"   ({c.error})" if c.error else "")
             for c in transcript.calls]
    return "\n".join(lines + [transcript.answer])


def _cmd_chat(args, read=input) -> int:
    model, tokenizer = load_model_by_name(args.model, args.preset)
    if tokenizer.chat_template is None:
        print(f"error: {args.model!r} has no chat template; chat needs an instruction-tuned model", file=sys.stderr)
        return 2
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
        print(f"{args.model}> {chat_reply(model, tokenizer, message, tools=args.model == 'tools')}")


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
        raise ValueError(f"unknown stage {args.stage!r}; valid stages: {', '.join(STAGES)}")
    for name in [args.stage] if args.stage else STAGES:
        for field_name, cfg in STAGES[name].config(preset).items():
            print(f"[{name}] preset.{field_name} of {preset.name!r}")
            print("\n".join(config_lines(cfg)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embiggen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train or load every stage and print the report card")
    run.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default: $EMBIGGEN_PRESET or laptop)")
    run.add_argument("--stages", default=None, help=f"comma-separated stages: {','.join(STAGES)} (default: all)")
    run.add_argument("--out", default=None, help="folder for report.json and report.md (default: runs/<preset>)")
    run.add_argument("--base", default=None, help="start the chain from this Hugging Face causal LM (a local folder, "
                                                  "or a hub name in the local cache) instead of pretraining the "
                                                  "embedded model (default: $EMBIGGEN_BASE)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--experiments", action="store_true",
                     help="also train the models of the notebooks' experiments (notebook 1's size sweep, notebook 2's "
                          "ablation, notebook 3's KL sweep, notebook 4's DPO sweep), so no notebook cell trains for "
                          "minutes")
    run.set_defaults(func=_cmd_run)

    sample = sub.add_parser("sample", help="continue a prefix with a model")
    sample.add_argument("prefix")
    sample.add_argument("--model", default="base",
                        help=f"{', '.join(map(repr, LANGUAGE_MODELS))} or a Hugging Face model name or local path")
    sample.add_argument("--preset", default=None)
    sample.add_argument("-n", type=int, default=3, help="number of samples (when sampling)")
    sample.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    sample.add_argument("--top-k", type=int, default=None)
    sample.add_argument("--top-p", type=float, default=None)
    sample.add_argument("--max-new-tokens", type=int, default=40)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=_cmd_sample)

    config = sub.add_parser("config", help="show a stage's training config: every field, its value and what it does")
    config.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default: $EMBIGGEN_PRESET or laptop)")
    config.add_argument("--stage", default=None, help=f"one of {', '.join(STAGES)} (default: every stage)")
    config.set_defaults(func=_cmd_config)

    chat = sub.add_parser("chat", help="a small terminal chat with a model")
    chat.add_argument("--model", default="sft",
                      help=f"{', '.join(map(repr, LANGUAGE_MODELS))} or a Hugging Face model name or local path")
    chat.add_argument("--preset", default=None)
    chat.set_defaults(func=_cmd_chat)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    set_threads()
    transformers.logging.disable_progress_bar()
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
