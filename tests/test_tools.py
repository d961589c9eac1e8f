"""Tool use (embiggen.methods.tools): the tools, the strict runtime, the demonstrations' encoding, and
the generation loop that pauses at a call, runs it and splices the result back in."""

import operator

import pytest
import torch
from transformers import GenerationConfig

from embiggen.data.toolbox import ERROR, TOOLS, ToolError, calc, count, run_call, strip_calls, tool_demonstration
from embiggen.lm.tokenizer import chat_prompt, train_tokenizer
from embiggen.methods.sft import IGNORE_INDEX
from embiggen.methods.tools import encode_tool_example, generate_with_tools, response_pieces

TEXTS = ["Compute 2 + 3. 2 plus 3 is 5.", "Count the tea in: tea, milk, tea.", "[calc(12 - 4) -> 8] apples"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


def test_the_calculator_and_the_counter_against_plain_python():
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    for a, op, b in [(57, "+", 38), (562, "-", 304), (3, "-", 10), (12, "*", 11), (0, "+", 0)]:
        assert calc(f"{a} {op} {b}") == str(ops[op](a, b))
    assert calc("  7+5 ") == "12"
    items = ["tea", "milk", "tea", "Tea ", "jam"]
    assert count(f"tea; {', '.join(items)}") == str(sum(x.strip().lower() == "tea" for x in items))
    assert count("salt; tea, milk") == "0"
    # count(word): the list is the one in the user's message (its longest comma-separated run)
    message = "Here is a basket: jam, tea, tea, Tea. How many tea are in it? (Tea, I said.)"
    assert count("tea", message) == "3"
    with pytest.raises(ToolError, match="has none"):
        count("tea", "How many tea are there?")


@pytest.mark.parametrize("tool, args", [(calc, "2 ** 10"), (calc, "__import__('os').getcwd()"), (calc, "5 plus 3"),
                                        (calc, ""), (count, "tea, milk"), (count, "; tea"), (count, "a; b; c"),
                                        (count, "green tea; tea")])
def test_a_tool_refuses_arguments_it_cannot_parse(tool, args):
    with pytest.raises(ToolError):
        tool(args)


def test_the_runtime_never_raises_and_says_what_went_wrong():
    ok = run_call("Sure. [calc(40 + 2) ->")
    assert (ok.name, ok.args, ok.result, ok.error) == ("calc", "40 + 2", "42", None)
    unknown = run_call("[python(print(1)) ->")
    assert unknown.result == ERROR and "unknown tool 'python'" in unknown.error and "calc" in unknown.error
    malformed = run_call("[calc(2 ** 10) ->")
    assert malformed.result == ERROR and "calc takes" in malformed.error
    no_call = run_call("the answer is ->")
    assert no_call.result == ERROR and "not a call" in no_call.error
    assert run_call("[calc(1 + 1) ->", tools={"count": count}).result == ERROR  # only the tools it is given


def test_strip_calls_leaves_the_answer_a_reader_sees():
    assert strip_calls("[calc(57 + 38) -> 95] 57 plus 38 is 95.") == "57 plus 38 is 95."
    assert strip_calls("[count(tea; tea, jam) -> 1] 1") == "1"
    assert strip_calls("no call here") == "no call here"
    assert strip_calls("[calc(1 + 1) -> error] 2") == "2"


def test_a_demonstration_calls_the_tool_whose_result_is_the_gold_answer(tiny_splits):
    examples = [e for e in tiny_splits.tools_train() if "[" in e.answer]
    assert {e.cluster for e in examples} == {"arithmetic", "counting"}
    for e in examples:
        call, _, answer = e.answer.partition("] ")
        result = call.rpartition("-> ")[2]
        if e.cluster == "arithmetic":
            a, b = e.meta["a"], e.meta["b"]
            assert result == str(a + b if e.meta["op"] == "+" else a - b) == e.meta["value"]
        else:  # the counter found the instruction's own list
            assert result == str(e.meta["items"].split(", ").count(e.meta["thing"])) == answer
        assert strip_calls(e.answer) == answer and answer  # the answer after the call: the task's own
    with pytest.raises(ValueError, match="only arithmetic, counting"):
        tool_demonstration(tiny_splits.sft_train()[0].__class__("sentiment", 0, "x", "positive", {}))


def test_the_result_is_not_a_target_but_everything_the_model_writes_is(tok):
    response = "[calc(57 + 38) -> 95] 57 plus 38 is 95."
    assert response_pieces(response) == [("[calc(57 + 38) ->", True), (" 95]", False), (" 57 plus 38 is 95.", True)]
    enc = encode_tool_example(tok, "Compute 57 + 38.", response)
    ids, labels = enc["input_ids"], enc["labels"]
    n_prompt = len(tok(chat_prompt(tok, "Compute 57 + 38."), add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert tok.decode(ids[n_prompt:-1]) == response and ids[-1] == labels[-1] == tok.eos_token_id
    masked = [i for i, label in zip(ids[n_prompt:], labels[n_prompt:]) if label == IGNORE_INDEX]
    assert tok.decode(masked) == " 95]"
    assert tok.decode([label for label in labels[n_prompt:-1] if label != IGNORE_INDEX]) == \
        "[calc(57 + 38) -> 57 plus 38 is 95."
    two = "[calc(1 + 2) -> 3] [calc(3 * 3) -> 9] 9"
    assert [t for t, target in response_pieces(two) if not target] == [" 3]", " 9]"]


class ScriptedLM(torch.nn.Module):
    """Writes, for each instruction, the pieces of its script one `generate` call at a time —
    the first piece, then (after the runtime's result) the next — with HF's semantics: a row
    that stops (a stopping criterion, or EOS after its last piece) is padded from then on."""

    def __init__(self, tok, scripts: dict[str, list[str]]):
        super().__init__()
        self.tok, self.scripts, self.weight = tok, scripts, torch.nn.Parameter(torch.zeros(1))
        self.generation_config = GenerationConfig(repetition_penalty=2.0)
        self.calls = []  # what each generate call was given, for the test to read

    def generate(self, input_ids, attention_mask, max_new_tokens, stopping_criteria=None, pad_token_id=None,
                 eos_token_id=None, **kwargs):
        self.calls.append({"rows": len(input_ids), "max_new_tokens": max_new_tokens})
        plans = []
        for row in input_ids.tolist():
            text = self.tok.decode(row)
            instruction = next(x for x in self.scripts if x in text)
            done = text.count(" ->")  # pieces written so far: one per call already run
            piece = self.scripts[instruction][done]
            last = done == len(self.scripts[instruction]) - 1
            plans.append(self.tok(piece, add_special_tokens=False)["input_ids"] + ([eos_token_id] if last else []))
        seqs, alive = input_ids, torch.ones(len(input_ids), dtype=torch.bool)
        for step in range(max_new_tokens):
            nxt = torch.tensor([p[step] if a and step < len(p) else pad_token_id for p, a in zip(plans, alive)])
            alive &= torch.tensor([step < len(p) - 1 for p in plans])  # the plan's last token ends the row
            seqs = torch.cat([seqs, nxt[:, None]], dim=1)
            if stopping_criteria is not None:
                alive &= ~stopping_criteria[0](seqs, None)
            if not alive.any():
                break
        return seqs


def test_generation_pauses_at_each_call_runs_it_and_goes_on(tok):
    scripts = {"Compute 57 + 38.": ["[calc(57 + 38) ->", " 57 plus 38 is 95."],
               "Count the tea in: tea, jam, tea.": ["[count(tea) ->", " 2"],
               "Say hi.": ["hi"],
               "Use a shell.": ["[shell(rm -rf /) ->", " done"],
               "Two calls.": ["[calc(2 + 3) ->", " [calc(5 * 4) ->", " 20"]}
    model = ScriptedLM(tok, scripts)
    own = model.generation_config
    out = generate_with_tools(model, tok, list(scripts), max_new_tokens=40)
    by = dict(zip(scripts, out))
    assert by["Compute 57 + 38."].response == "[calc(57 + 38) -> 95] 57 plus 38 is 95."
    assert by["Compute 57 + 38."].answer == "57 plus 38 is 95." and by["Compute 57 + 38."].finished
    assert by["Count the tea in: tea, jam, tea."].answer == "2"
    assert by["Say hi."].response == "hi" and by["Say hi."].calls == []
    shell = by["Use a shell."]
    assert shell.response == "[shell(rm -rf /) -> error] done" and "unknown tool 'shell'" in shell.errors[0]
    two = by["Two calls."]
    assert [c.result for c in two.calls] == ["5", "20"] and two.answer == "20"
    assert [c["rows"] for c in model.calls] == [5, 4, 1]  # each round only the rows that made a call
    assert model.generation_config is own  # set aside while generating, then restored


def test_the_budget_counts_the_models_tokens_and_calls_are_capped(tok):
    scripts = {"Loop.": ["[calc(1 + 1) ->", " [calc(2 + 2) ->", " [calc(3 + 3) ->", " 6"]}
    capped = generate_with_tools(ScriptedLM(tok, scripts), tok, ["Loop."], max_new_tokens=200, max_calls=2)[0]
    assert len(capped.calls) == 2 and not capped.finished  # the third call is never run
    assert capped.response.endswith("[calc(3 + 3) ->")
    first = len(tok("[calc(1 + 1) ->", add_special_tokens=False)["input_ids"])
    short = generate_with_tools(ScriptedLM(tok, scripts), tok, ["Loop."], max_new_tokens=first)[0]
    assert short.calls == [] and short.response == "[calc(1 + 1) ->"  # out of budget: no call is run
    no_tools = generate_with_tools(ScriptedLM(tok, {"Hi.": ["[calc(1 + 1) ->", " 3"]}), tok, ["Hi."],
                                   tools=None, max_new_tokens=200)[0]
    assert no_tools.calls == []


def test_tools_is_a_dict_of_named_functions():
    assert set(TOOLS) == {"calc", "count"} and all(callable(f) for f in TOOLS.values())


def test_the_tools_stage_trains_reports_and_chats(tiny_preset, tiny_base, cache_dir, monkeypatch, capsys):
    """The `tools` stage on a tiny model (the tiny base stands in for the SFT model): trained
    with the results masked, cached, reported with every key of the issue, and `embiggen chat
    --model tools` shows each call the model makes."""
    from dataclasses import replace

    import embiggen.commands as commands
    import embiggen.pipeline as pipeline
    from embiggen.chain import train_or_load_tools

    preset = replace(tiny_preset, tools=replace(tiny_preset.tools, n_eval=6,
                                                train=replace(tiny_preset.tools.train, steps=4, n_train=60, n_val=8)))
    tuned = train_or_load_tools(preset, sft=tiny_base, progress=False, device="cpu")
    assert tuned.info["n_demonstrations"] == 30 and tuned.path.parent.name == "tools"
    again = train_or_load_tools(preset, sft=tiny_base, progress=False, device="cpu")
    assert again.path == tuned.path and again.info == tuned.info  # loaded from the cache
    report = pipeline.report_tools(preset, {"tools": tuned, "sft": tiny_base}, pipeline.Measured())
    for key in ("train_seconds", "counting_accuracy", "counting_accuracy_without_tools",
                "arithmetic_beyond_range_accuracy", "arithmetic_beyond_range_accuracy_without_tools",
                "malformed_call_rate"):
        assert 0 <= report[key] <= (1 if key != "train_seconds" else 600)
    assert report["n_eval_prompts"] == {"counting": 6, "arithmetic_beyond_range": 6}

    scripts = {"What is 400 + 21?": ["[calc(400 + 21) ->", " 400 plus 21 is 421."]}
    monkeypatch.setattr(commands, "load_model_by_name", lambda name, preset, train=False: (ScriptedLM(tuned.tokenizer, scripts),
                                                                         tuned.tokenizer))
    lines = iter(["What is 400 + 21?", "quit"])

    class Args:
        model, preset, train = "tools", "smoke", False

    assert commands._cmd_chat(Args, read=lambda prompt: next(lines)) == 0
    out = capsys.readouterr().out
    assert "[tool] calc(400 + 21) -> 421" in out and "400 plus 21 is 421." in out
