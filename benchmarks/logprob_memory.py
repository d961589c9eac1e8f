"""Peak memory of one forward and backward pass with a large vocabulary: all logits at once
against `logprob_chunk` positions at a time — SFT's loss (`embiggen.methods.sft.chunked_token_nll`) or
PPO's log-probs, entropies and values of a minibatch (`PolicyWithValueHead.logprobs_and_values`,
the second half of each row taken as the response).

    python benchmarks/logprob_memory.py [--stage sft|ppo] [--vocab 151936] [--batch 8] [--length 256] [--chunk 256]

A one-layer Llama (hidden size 64) with a Qwen2.5-sized vocabulary, float32, on the CPU: the
model is small so that the logits dominate, as they do for a 0.5B model with a 150k vocabulary.
Each setting runs in its own process and reports that process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def measure(stage: str, vocab: int, batch: int, length: int, chunk: int) -> dict:
    import time

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from embiggen.methods.sft import batch_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=128, max_position_embeddings=length))
    ids = torch.randint(0, vocab, (batch, length))
    labels = ids.clone()
    labels[:, : length // 2] = -100  # the prompt half
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if stage == "sft":
        loss, _ = batch_loss(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels},
                             logprob_chunk=chunk)
    else:
        from embiggen.lm.generate import position_ids_from
        from embiggen.methods.ppo import PolicyWithValueHead

        mask = torch.ones_like(ids)
        logprobs, entropy, values = PolicyWithValueHead(model).logprobs_and_values(
            ids, mask, position_ids_from(mask), ids[:, length // 2:], 1.0, chunk)
        loss = -(logprobs.mean() + 0.01 * entropy.mean()) + values.pow(2).mean()
    loss.backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"chunk": chunk, "loss": round(loss.item(), 4), "peak_mb": round(peak / 1024), "before_mb": round(before / 1024),
            "seconds": round(seconds, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("sft", "ppo"), default="sft")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # run one setting (child process)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.stage, args.vocab, args.batch, args.length, args.one)))
        return
    positions = args.length if args.stage == "sft" else args.length // 2  # PPO's logits: the response only
    logits_mb = args.batch * positions * args.vocab * 4 / 2 ** 20
    print(f"{args.stage}: vocab={args.vocab} batch={args.batch} length={args.length}: "
          f"float32 logits {logits_mb:,.0f} MB")
    for chunk in (0, args.chunk):
        out = subprocess.run([sys.executable, __file__, f"--stage={args.stage}", f"--vocab={args.vocab}",
                              f"--batch={args.batch}",
                              f"--length={args.length}", f"--one={chunk}"], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"logprob_chunk={r['chunk']}: loss {r['loss']} | peak memory {r['peak_mb']:,} MB "
              f"(model loaded: {r['before_mb']:,} MB) | forward + backward {r['seconds']} s")


if __name__ == "__main__":
    main()
