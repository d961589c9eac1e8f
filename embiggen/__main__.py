"""`embiggen` and `python -m embiggen`: the command line (`embiggen/cli.py`), with Ctrl-C caught from
the first instant. The console script imports this module, which imports nothing else until
`main` runs, so an interrupt while the command line's own modules load says how to resume,
like one at any later moment, instead of showing a traceback."""

import sys


def main(argv=None) -> int:
    try:
        from embiggen.cli import main as cli_main
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
