"""The methods, one file each with its equation and paper: pretraining, SFT, RM, PPO, DPO, best-of-n, tools, ..."""
