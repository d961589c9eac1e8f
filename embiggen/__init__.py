"""Embiggen: rebuild the steps that turned language models into assistants — pretraining,
instruction tuning, alignment tuning and RL with verifiable rewards — on a laptop CPU.

The folders are the layers, in the order data flows (each imports only the ones before it):
errors (what the user is told), utils and presets (settings), data/ (the embedded world and
every split), lm/ (the language model and its training loop), judging/ (evaluation and the
gold labeler), methods/ (one file per method), chain (each stage trained once and cached),
experiments, report (the report card), pipeline, commands and cli (the run and the command
line), notebook/ (what the notebooks show).
"""

__version__ = "0.1.0"
