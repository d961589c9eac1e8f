"""Embiggen: rebuild the three steps that turned language models into assistants —
pretraining, instruction tuning and alignment tuning — on a laptop CPU."""

__version__ = "0.1.0"
