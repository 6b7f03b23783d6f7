"""``hsrm import`` / ``hsrm select``: any engine's generations into a store, and best-of-N over them.

The equivalence test: a store sampled by hsrm with ``--api-log``, imported back from that log with
teacher forcing, is the sampled store (texts, labels, tokens; states and log-probs within the
tolerance capture == teacher forcing meets in test_capture.py), and heads fitted on either score the
other's answers alike."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hsrm.cli import main
from hsrm.engines import sample
from hsrm.errors import HsrmError
from hsrm.features import TOPK_LAYER
from hsrm.heads import make_head
from hsrm.importing import ImportConfig, SelectConfig, import_generations, read_generations, select
from hsrm.sampling import SampleRunConfig
from hsrm.store import Store

FIX = Path(__file__).parent / "fixtures" / "import"


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def test_import_of_api_log_equals_sampled_store(tiny_lm, tmp_path):
    task = dict(task="synthetic", n_prompts=6)
    sampled = sample(
        SampleRunConfig(
            out=str(tmp_path / "sampled"),
            model="tiny:0",
            n=4,
            max_new_tokens=5,
            temperature=1.0,
            shard_prompts=4,
            api_log=str(tmp_path / "log.jsonl"),
            **task,
        ),
        lm=tiny_lm,
        progress=False,
    )
    imported = import_generations(
        ImportConfig(
            input=str(tmp_path / "log.jsonl"),
            out=str(tmp_path / "imported"),
            model="tiny:0",
            shard_prompts=4,
            batch_size=3,  # chunks of 3 and 1 over each prompt's shared cache
            **task,
        ),
        lm=tiny_lm,
        progress=False,
    )
    assert len(imported) == len(sampled) == 24
    assert imported.layers == sampled.layers
    assert imported.fingerprint == sampled.fingerprint
    keys = (
        "prompt_id",
        "sample",
        "question",
        "reference",
        "text",
        "extracted",
        "label",
        "n_tokens",
    )
    for a, b in zip(sampled.records, imported.records):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    for i in range(len(sampled)):
        assert sampled.token_ids(i) == imported.token_ids(i)
        if sampled.records[i]["n_tokens"]:
            assert _rel(imported.hidden(i), sampled.hidden(i)) < 1e-3
            assert _rel(imported.logprobs(i), sampled.logprobs(i)) < 1e-3
    assert imported.meta["import"]["format"] == "chat"
    assert imported.meta["import"]["features"] == "teacher_forced"
    assert imported.complete
    # what the model ran as, as sample records it: the passed-in model's own dtype and device kind
    for k in ("model_dtype", "model_device"):
        assert imported.meta[k] == sampled.meta[k], k
    assert (imported.meta["model_dtype"], imported.meta["model_device"]) == ("float32", "cpu")

    # The random tiny model answers nothing right, so the heads learn a stand-in label that the
    # states carry: the answer is more likely than the median one.
    lp = np.array([float(sampled.logprobs(i).mean()) for i in range(len(sampled))])
    y = (lp > np.median(lp)).astype(int)
    pids = sampled.prompt_ids
    for fit_on, other in ((sampled, imported), (imported, sampled)):
        head = make_head("probe", layer=tiny_lm.fingerprint.n_layers, C=10.0)
        head.fit(fit_on.features(), y, pids)
        np.testing.assert_allclose(
            head.score(other.features()), head.score(fit_on.features()), atol=2e-3
        )


def test_import_resumes_and_refuses_another_input(tiny_lm, tmp_path):
    log = tmp_path / "log.jsonl"
    shutil.copy(FIX / "chat.jsonl", log)
    cfg = ImportConfig(input=str(log), out=str(tmp_path / "s"), model="tiny:0", shard_prompts=5)
    first = import_generations(cfg, lm=tiny_lm, progress=False)
    # a killed import: the last shard's index gone, the store marked incomplete
    (tmp_path / "s" / "shard-00002.json").unlink()
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    (tmp_path / "s" / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    moved = tmp_path / "moved.jsonl"  # the same bytes elsewhere resume the same store
    shutil.copy(log, moved)
    cfg2 = dataclasses.replace(cfg, input=str(moved))
    again = import_generations(cfg2, lm=tiny_lm, progress=False)
    assert again.complete and len(again) == len(first) == 48
    assert again.meta["import"]["input"] == str(moved)
    assert [r["text"] for r in again.records] == [r["text"] for r in first.records]
    log.write_text(log.read_text().replace('"8."', '"9."', 1))
    with pytest.raises(HsrmError, match="existing run has sampling"):
        import_generations(cfg, lm=tiny_lm, progress=False)


@pytest.mark.parametrize(
    "name, kw, n_req, n_choices",
    [
        ("chat.jsonl", {}, 12, 48),
        ("batch_output.jsonl", {"requests": str(FIX / "batch_input.jsonl")}, 3, 6),
        ("completions.jsonl", {}, 2, 4),
    ],
)
def test_each_format_imports_with_teacher_forcing(tiny_lm, tmp_path, name, kw, n_req, n_choices):
    store = import_generations(
        ImportConfig(input=str(FIX / name), out=str(tmp_path / "s"), model="tiny:0", **kw),
        lm=tiny_lm,
        progress=False,
    )
    assert len(store) == n_choices and len(set(store.prompt_ids)) == n_req
    assert store.layers == tuple(range(tiny_lm.fingerprint.n_layers + 1))
    assert 0 < store.labels.sum() < len(store)  # both the labels field and the checker gave labels
    for i in range(len(store)):
        text = store.records[i]["text"]
        assert store.hidden(i).shape[0] == len(text.encode())  # byte tokenizer: a token a byte


def test_batch_labels_from_requests_references():
    fmt, reqs = read_generations(
        FIX / "batch_output.jsonl", requests=str(FIX / "batch_input.jsonl")
    )
    assert fmt == "batch"
    assert [r.prompt.answer for r in reqs] == ["7", "9", "11"]
    assert [r.prompt.question for r in reqs] == [
        "What is 2 + 5?",
        "What is 3 + 6?",
        "What is 4 + 7?",
    ]


def test_logits_only_import_train_select_cli(tmp_path, capsys):
    """The closed-API path from the command line: import the log's top-k log-probs, train the
    logits-only head, pick the best choice of each request."""
    st, head, picked = tmp_path / "s", tmp_path / "h", tmp_path / "picked.jsonl"
    assert main(["import", "--input", str(FIX / "chat.jsonl"), "--out", str(st)]) == 0
    store = Store(st)
    assert store.layers == (TOPK_LAYER,) and store.fingerprint.hidden_size == 2 * 2 + 3
    assert store.meta["import"]["features"] == "logged_top2_logprobs"
    assert (store.meta["model_dtype"], store.meta["model_device"]) == ("none", "none")  # no model
    # no --head-type: auto picks the logits-only head for a store of logits alone
    args = ["train", str(st), "--out", str(head)]
    assert main([*args, "--test-frac", "0", "--params", "max_epochs=30", "lr=0.01"]) == 0
    assert json.loads((head / "config.json").read_text())["architecture"] == "elhsr_toplogprobs"
    sel = ["select", "--head", str(head), "--input", str(FIX / "chat.jsonl"), "--out", str(picked)]
    assert main(sel) == 0
    rows = [json.loads(x) for x in picked.read_text().splitlines()]
    assert len(rows) == 12
    for r in rows:
        assert r["rank"] == 1 and r["n"] == 4 and r["score"] == max(r["scores"])
        assert r["ranks"][r["index"]] == 1 and sorted(r["ranks"]) == [1, 2, 3, 4]
    # the fixture's right answers are the confident ones: the head picks them
    labels = [int(x) for x in store.labels]
    right = sum(labels[4 * q + r["index"]] for q, r in enumerate(rows))
    assert right >= 10
    assert "requests" in capsys.readouterr().out


def test_select_with_hidden_state_head_and_model(tiny_lm, tmp_path):
    store = import_generations(
        ImportConfig(input=str(FIX / "chat.jsonl"), out=str(tmp_path / "s"), model="tiny:0"),
        lm=tiny_lm,
        progress=False,
    )
    head = make_head("probe", layer=2).fit(store.features(), store.labels, store.prompt_ids)
    head.save(tmp_path / "h")
    rows = select(
        SelectConfig(
            head=str(tmp_path / "h"),
            input=str(FIX / "chat.jsonl"),
            out=str(tmp_path / "p.jsonl"),
            model="tiny:0",
        ),
        lm=tiny_lm,
    )
    want = head.score(store.features())  # from the store's float16 states: fp16 rounding apart
    for q, r in enumerate(rows):
        np.testing.assert_allclose(r["scores"], want[4 * q : 4 * q + 4], atol=2e-3)
    with pytest.raises(HsrmError, match="give --model"):
        select(SelectConfig(head=str(tmp_path / "h"), input=str(FIX / "chat.jsonl"), out="x"))


def _chat_line(**over):
    row = json.loads((FIX / "chat.jsonl").read_text().splitlines()[0])
    row.update(over)
    return row


def _bad_choice(**over):
    row = _chat_line()
    row["choices"][1] = {**row["choices"][1], **over}
    return row


BAD = {
    "not json": "{not json",
    "not an object": "[1, 2]",
    "unknown shape": {"foo": 1},
    "no choices": _chat_line(choices=[]),
    "choice not an object": _chat_line(choices=[3]),
    "no text": _bad_choice(message={"role": "assistant", "content": None}),
    "bad token ids": _bad_choice(token_ids=[1, -2]),
    "labels of other length": _chat_line(metadata={"labels": [1, 0]}),
    "bad label": _chat_line(metadata={"labels": [1, 0, 2, 0]}),
    "no top_logprobs": _bad_choice(logprobs={"content": [{"token": "x", "logprob": -1.0}]}),
    "duplicate id": _chat_line(id="chatcmpl-001"),
    "no prompt": _chat_line(messages=None, id="zz"),
    "batch line in a chat file": {"custom_id": "a", "response": {}},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_line_refused_naming_file_and_line(tmp_path, capsys, case):
    lines = (FIX / "chat.jsonl").read_text().splitlines()[:3]
    bad = BAD[case]
    lines.insert(2, bad if isinstance(bad, str) else json.dumps(bad))
    if case == "no prompt":  # a prompt-less line is fine without a model, refused with one
        lines[2] = json.dumps({k: v for k, v in json.loads(lines[2]).items() if k != "messages"})
    path = tmp_path / "gens.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "store"
    args = ["import", "--input", str(path), "--out", str(out)]
    if case in ("no prompt", "bad token ids"):
        args += ["--model", "tiny:0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{path}:3" in " ".join(err.split()), err
    assert "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_failed_batch_request_and_unknown_custom_id_refused(tmp_path):
    rows = [json.loads(x) for x in (FIX / "batch_output.jsonl").read_text().splitlines()]
    rows[1] = {**rows[1], "response": None, "error": {"code": "server_error"}}
    p = tmp_path / "out.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(HsrmError, match=f"{p}:2: the batch request failed"):
        read_generations(p, requests=str(FIX / "batch_input.jsonl"))
    rows[1] = {**rows[0], "custom_id": "req-9"}
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(HsrmError, match=f"{p}:2: custom_id 'req-9' is not in"):
        read_generations(p, requests=str(FIX / "batch_input.jsonl"))


def test_unlabelled_choice_refused(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text(json.dumps({"prompt": "Q: hi\nA:", "completion": " yo"}) + "\n")
    with pytest.raises(HsrmError, match=f"{p}:1: choices\\[0\\] has neither a labels field"):
        import_generations(ImportConfig(input=str(p), out=str(tmp_path / "s"), model="tiny:0"))
    assert not (tmp_path / "s").exists()


def test_vllm_token_id_strings_are_read_as_ids():
    row = _chat_line()
    c = row["choices"][0]
    c["logprobs"]["content"] = [
        {**e, "token": f"token_id:{40 + i}"} for i, e in enumerate(c["logprobs"]["content"])
    ]
    from hsrm.importing.readers import _token_ids

    assert _token_ids(c, "x") == [40 + i for i in range(len(c["logprobs"]["content"]))]
    assert torch.equal(torch.tensor(_token_ids({"token_ids": [3, 4]}, "x")), torch.tensor([3, 4]))


def test_line_prompt_is_what_teacher_forcing_runs_and_task_gives_the_reference(tmp_path):
    from hsrm.tasks import get_task

    task_prompt = get_task("synthetic", n=2).prompts()[0]
    row = _chat_line(metadata={"prompt_id": task_prompt.id}, reference=None)
    p = tmp_path / "g.jsonl"
    p.write_text(json.dumps(row) + "\n")
    _, (req,) = read_generations(p, prompts={task_prompt.id: task_prompt})
    assert req.prompt.messages == tuple(row["messages"])  # what the engine was sent
    assert req.prompt.answer == task_prompt.answer and req.prompt.family == task_prompt.family
    del row["messages"]  # hsrm's own log: the task's prompt
    p.write_text(json.dumps(row) + "\n")
    _, (req,) = read_generations(p, prompts={task_prompt.id: task_prompt})
    assert req.prompt == task_prompt


def test_prompt_longer_than_the_context_refused(tiny_lm, tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text(
        json.dumps({"prompt": "Q: hi\nA:", "completion": " 1", "label": 1})
        + "\n"
        + json.dumps({"prompt": "x" * 5000, "completion": " 1", "label": 1})
        + "\n"
    )
    with pytest.raises(HsrmError, match=f"{p}:2: prompt .* exceeds the model's context"):
        import_generations(ImportConfig(input=str(p), out=str(tmp_path / "s")), lm=tiny_lm)
    assert not (tmp_path / "s").exists()


def test_reference_in_the_request_body_metadata(tmp_path):
    rows = [json.loads(x) for x in (FIX / "batch_input.jsonl").read_text().splitlines()]
    for r in rows:
        r["body"]["metadata"] = {"reference": r.pop("reference")}
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, reqs = read_generations(FIX / "batch_output.jsonl", requests=str(p))
    assert [r.prompt.answer for r in reqs] == ["7", "9", "11"]


def test_import_records_the_resolved_model_dtype_and_resumes_only_in_it(tmp_path):
    """A model hsrm loads: ``auto`` is recorded resolved (as ``hsrm sample`` records it), and the
    store is not resumed in another dtype, refused before the model loads."""
    from hsrm.models import ModelConfig

    out = tmp_path / "s"
    cfg = ImportConfig(input=str(FIX / "completions.jsonl"), out=str(out), model="tiny:0")
    store = import_generations(cfg, progress=False)
    want = ModelConfig(model="tiny:0").resolve()
    assert store.meta["model_dtype"] == want.dtype != "auto"
    assert store.meta["model_device"] == want.device.split(":")[0]
    other = "float32" if want.dtype != "float32" else "bfloat16"
    with pytest.raises(HsrmError, match=f"model_dtype={other!r}"):
        import_generations(dataclasses.replace(cfg, dtype=other), progress=False)
    logged = tmp_path / "logged"
    import_generations(ImportConfig(input=str(FIX / "chat.jsonl"), out=str(logged)), progress=False)
    with pytest.raises(HsrmError, match="holds logged log-probs"):
        import_generations(
            ImportConfig(input=str(FIX / "chat.jsonl"), out=str(logged), model="tiny:0"),
            progress=False,
        )
