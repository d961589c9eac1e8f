"""The language model: tokenizer, transformer, decoding, and the training loop and cache every stage shares."""
