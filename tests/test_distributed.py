"""Data parallelism (embiggen.lm.distributed) with two processes on the CPU (gloo), as torchrun
starts them: pretraining, SFT, DPO, the reward model, PPO (with its second round's reward model) and
GRPO through the chain give the weights one process gives with the same global batches — each rank
trains on half of every batch and samples half of every rollout — and only rank 0 writes into the
cache."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = r'''
import json, os, sys
from dataclasses import replace
import torch

trace = []
real_replace = os.replace
def traced(src, dst, *a, **k):  # every atomic write ends in a rename
    trace.append(str(dst))
    return real_replace(src, dst, *a, **k)
os.replace = traced

from embiggen.lm.distributed import init, world_size
from embiggen.methods import dpo as dpo_method, grpo as grpo_method, ppo as ppo_method, reward as reward_method
from embiggen.methods import sft as sft_method

rows = {"sft": [], "dpo": [], "rm": [], "ppo": [], "grpo": [],  # the size of each batch this rank trains on
        "ppo_sampled": [], "grpo_sampled": []}  # and of each share of a rollout it samples (prompts)
for name, method in (("ppo_sampled", ppo_method), ("grpo_sampled", grpo_method)):
    method.sample_grouped_episodes = (lambda sample, name: lambda lm, tok, instructions, *a, **k: rows[name].append(
        len(instructions)) or sample(lm, tok, instructions, *a, **k))(method.sample_grouped_episodes, name)
ppo_loss, grpo_loss = ppo_method.clipped_policy_loss, grpo_method.grpo_loss
ppo_method.clipped_policy_loss = lambda lp, *a, **k: rows["ppo"].append(len(lp)) or ppo_loss(lp, *a, **k)
grpo_method.grpo_loss = lambda lp, *a, **k: rows["grpo"].append(len(lp)) or grpo_loss(lp, *a, **k)
sft_batch = sft_method.SFTData.next_batch
sft_method.SFTData.next_batch = lambda self, g: (lambda b: rows["sft"].append(len(b["input_ids"])) or b)(
    sft_batch(self, g))
dpo_batch = dpo_method.DPOData.batch
dpo_method.DPOData.batch = lambda self, idx: rows["dpo"].append(len(idx)) or dpo_batch(self, idx)
rm_batch = reward_method.ranking_batch
reward_method.ranking_batch = lambda tok, groups: rows["rm"].append(len(groups)) or rm_batch(tok, groups)
from embiggen.chain import (train_or_load_base, train_or_load_dpo, train_or_load_grpo, train_or_load_ppo,
                            train_or_load_reward, train_or_load_sft)
from embiggen.presets import ModelConfig, OptimConfig, PretrainConfig, get_preset

init()
torch.set_num_threads(1)
smoke = get_preset("smoke")
preset = replace(smoke, n_people=8, n_unknown=4, train_documents=600, val_documents=60, vocab_size=300,
                 model=ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=64),
                 pretrain=PretrainConfig(steps=6, batch_size=8, seq_len=32, optim=OptimConfig(lr=3e-3, warmup_steps=2),
                                         eval_every=3, eval_batches=2),
                 sft=replace(smoke.sft, steps=4, batch_size=8, eval_every=2),
                 dpo=replace(smoke.dpo, steps=3, batch_size=4, eval_every=3),
                 reward=replace(smoke.reward, steps=3, batch_size=32, eval_every=3))
base = train_or_load_base(preset, progress=False, device="cpu")
sft = train_or_load_sft(preset, base=base, progress=False, device="cpu")
dpo = train_or_load_dpo(preset, sft=sft, progress=False, device="cpu")
rm = train_or_load_reward(preset, sft=sft, progress=False, device="cpu")
ppo = train_or_load_ppo(preset, sft=sft, reward=rm, progress=False, device="cpu")
grpo = train_or_load_grpo(preset, sft=sft, progress=False, device="cpu")
out = {"paths": {"base": str(base.path), "sft": str(sft.path), "dpo": str(dpo.path), "rm": str(rm.path),
                 "ppo": str(ppo.path), "grpo": str(grpo.path)},
       "writes": trace,
       "world": world_size(), "rows": rows,
       "sft_loss": sft.log.train_loss, "dpo_loss": dpo.log.train_loss}
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RESUME_WORKER = r'''
import json, sys
from pathlib import Path
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from embiggen.lm.distributed import barrier, init, is_split, rank, shard_weights, gather_weights, world_size
from embiggen.lm.training import load_resume_point, make_optimizer, optimizer_step, save_resume_point
from embiggen.presets import OptimConfig

init()
ids = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(1))
cfg = OptimConfig(lr=1e-2, weight_decay=0.1)

def fresh():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
    shard_weights(model)
    return model, make_optimizer(model.parameters(), cfg)

def train(model, optimizer, steps):
    mine = ids[rank()::world_size()]
    for _ in range(steps):  # this rank's rows, each token weighted by its share of the whole batch's
        logits = model(input_ids=mine).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), mine[:, 1:].reshape(-1), reduction="sum")
        optimizer_step(model, optimizer, loss / ids[:, 1:].numel(), 0.5)

straight, opt = fresh()
split = is_split(straight)
train(straight, opt, 4)
resumed, opt2 = fresh()
train(resumed, opt2, 2)
folder = Path(sys.argv[2])
save_resume_point(folder, resumed, opt2, torch.Generator(), {"step": 2})
barrier()
again, opt3 = fresh()
state = load_resume_point(folder, again, opt3, torch.Generator())
train(again, opt3, 2)
local = getattr(opt, "optim", opt).state  # a sharded optimiser's own part
state_numel = sum(t.to_local().numel() if hasattr(t, "to_local") else t.numel()
                  for s in local.values() for k, t in s.items() if k == "exp_avg")
for model in (straight, again):
    gather_weights(model)
with open(sys.argv[1], "w") as f:
    json.dump({"optimizer": type(opt).__name__, "state": state, "moments": state_numel, "split": split,
               "params": sum(p.numel() for p in straight.parameters()), "plain": not is_split(straight),
               "layer": type(straight.model.layers[0]).__name__,
               "straight": torch.cat([p.detach().flatten() for p in straight.parameters()]).tolist(),
               "resumed": torch.cat([p.detach().flatten() for p in again.parameters()]).tolist()}, f)
'''


def launch(tmp_path: Path, name: str, world: int, worker: str = WORKER, **env_extra) -> list[dict]:
    """The worker on `world` processes (one: no process group), a cache of its own."""
    cache, port = tmp_path / f"cache-{name}", free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "EMBIGGEN_CACHE": str(cache), "EMBIGGEN_THREADS": "1", "EMBIGGEN_DEVICE": "cpu",
               **env_extra}
        if world > 1:
            env.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        procs.append(subprocess.Popen([sys.executable, "-c", worker, str(tmp_path / f"{name}-{rank}.json"),
                                       str(tmp_path / f"resume-{name}")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=600)[1] for p in procs]
    for rank, (p, err) in enumerate(zip(procs, errors)):
        (tmp_path / f"{name}-{rank}.err").write_text(err)
        assert p.returncode == 0, f"{name}, rank {rank}: {err[-3000:]}"
    return [json.loads((tmp_path / f"{name}-{rank}.json").read_text()) for rank in range(world)]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_two_processes_train_the_weights_one_process_trains_and_only_rank_0_writes(tmp_path):
    (one,) = launch(tmp_path, "one", 1)
    two = launch(tmp_path, "two", 2)
    zero = launch(tmp_path, "zero", 2, EMBIGGEN_SHARD="optimizer")  # each rank keeps half of AdamW's state
    fsdp = launch(tmp_path, "fsdp", 2, EMBIGGEN_SHARD="weights")  # and half of every layer
    assert one["world"] == 1 and two[0]["world"] == two[1]["world"] == 2
    # each rank trained on half of every batch (the training batches: the first rows["..."] of each step)
    assert two[0]["rows"]["sft"][0] + two[1]["rows"]["sft"][0] == one["rows"]["sft"][0] == 8
    assert two[0]["rows"]["dpo"][0] == two[1]["rows"]["dpo"][0] == one["rows"]["dpo"][0] // 2 == 2
    assert two[0]["rows"]["rm"][0] + two[1]["rows"]["rm"][0] == one["rows"]["rm"][0] >= 2  # rankings
    for stage in ("ppo", "grpo"):  # every minibatch of the updates, split in two
        assert [a + b for a, b in zip(two[0]["rows"][stage], two[1]["rows"][stage])] == one["rows"][stage]
        assert one["rows"][stage] and all(a <= (w + 1) // 2 for a, w in zip(two[0]["rows"][stage], one["rows"][stage]))
    for stage in ("ppo_sampled", "grpo_sampled"):  # every rollout sampled in two halves
        assert one["rows"][stage] and [a + b for a, b in zip(two[0]["rows"][stage], two[1]["rows"][stage])] == \
            one["rows"][stage]
        assert all(a == (w + 1) // 2 for a, w in zip(two[0]["rows"][stage], one["rows"][stage]))
    assert two[0]["paths"] == two[1]["paths"]  # both ranks hand back the same entries
    for stage in ("base", "sft", "dpo", "rm", "ppo", "grpo"):
        a = load_file(Path(one["paths"][stage]) / "model.safetensors")
        for other in (two, zero, fsdp):
            b = load_file(Path(other[0]["paths"][stage]) / "model.safetensors")
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=f"{stage} {key}")
    assert two[0]["sft_loss"] == pytest.approx(one["sft_loss"], rel=1e-5)  # the logged loss is the whole batch's
    assert two[0]["dpo_loss"] == pytest.approx(one["dpo_loss"], rel=1e-5)
    cache = str(tmp_path / "cache-two")
    assert two[0]["writes"] and any(w.startswith(cache) for w in two[0]["writes"])
    assert not [w for w in two[1]["writes"] if w.startswith(cache)]  # rank 1 wrote nothing into the cache


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
@pytest.mark.parametrize("mode", ["optimizer", "weights"])
def test_sharding_keeps_part_of_the_state_on_each_rank_and_resumes_where_it_stopped(tmp_path, mode):
    (one,) = launch(tmp_path, "one", 1, RESUME_WORKER)
    two = launch(tmp_path, mode, 2, RESUME_WORKER, EMBIGGEN_SHARD=mode)
    assert one["optimizer"] == "AdamW" and not one["split"] and one["moments"] == one["params"]
    if mode == "optimizer":  # whole weights, each rank the moments of some of them
        assert {r["optimizer"] for r in two} == {"ZeroRedundancyOptimizer"} and not two[0]["split"]
        assert all(0 < r["moments"] < r["params"] for r in two) and sum(r["moments"] for r in two) == one["params"]
    else:  # the layers split: each rank holds half of their moments, the embedding's whole
        layers = one["params"] - 50 * 16 - 16  # the tied embedding and the final norm stay whole
        assert {r["optimizer"] for r in two} == {"AdamW"} and two[0]["split"]
        assert [r["moments"] for r in two] == [50 * 16 + 16 + layers // 2] * 2
    assert all(r["plain"] and r["layer"] == "LlamaDecoderLayer" for r in two)  # ordinary modules again
    assert two[0]["state"] == two[1]["state"] == {"step": 2}
    for r in two:  # the same weights as one process, and resuming from the gathered state changes nothing
        torch.testing.assert_close(torch.tensor(r["straight"]), torch.tensor(one["straight"]), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(r["resumed"]), torch.tensor(r["straight"]), atol=0, rtol=0)
    torch.testing.assert_close(torch.tensor(one["resumed"]), torch.tensor(one["straight"]), atol=0, rtol=0)


def test_the_sharding_switch_is_checked():
    from embiggen.lm.distributed import sharding

    os.environ["EMBIGGEN_SHARD"] = "yes"
    try:
        with pytest.raises(ValueError, match="EMBIGGEN_SHARD must be one of none, optimizer, weights"):
            sharding()
    finally:
        del os.environ["EMBIGGEN_SHARD"]
    assert sharding() == "none"  # one process: nothing to shard
