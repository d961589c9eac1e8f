"""The embedded world and every data split: people and facts, instruction tasks, tools, mixtures, held-out sets."""
