"""The store: round trip, compact dtypes, refusing to mix runs, and resuming after a real kill."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hsrm.capture import SampleConfig, parse_layers, sample_prompt
from hsrm.errors import HsrmError
from hsrm.store import Store, StoreWriter
from hsrm.tasks import get_task


def _write(tmp, lm, dtype="float16", pool="none", n_prompts=4):
    task = get_task("synthetic", n=n_prompts)
    layers = parse_layers("all", lm.fingerprint.n_layers)
    cfg = SampleConfig(n=3, max_new_tokens=4)
    meta = {
        "fingerprint": lm.fingerprint.to_dict(),
        "layers": list(layers),
        "task": task.describe(),
        "sampling": {"n": 3},
        "dtype": dtype,
        "pool": pool,
        "shard_prompts": 2,
    }
    w = StoreWriter(tmp, meta)
    ps = task.prompts()
    results = [sample_prompt(lm, p, cfg, layers) for p in ps]
    w.write_shard(0, results[:2], task.grade(results[:2]))
    w.write_shard(1, results[2:], task.grade(results[2:]))
    w.finish()
    return results


@pytest.mark.parametrize(
    "dtype,tol", [("float16", 2e-3), ("bfloat16", 1e-2), ("int8", 2e-2), ("fp8", 8e-2)]
)
def test_roundtrip(tmp_path, tiny_lm, dtype, tol):
    results = _write(tmp_path, tiny_lm, dtype)
    st = Store(tmp_path)
    answers = [a for r in results for a in r.answers]
    assert len(st) == len(answers) == 12
    assert st.complete
    for i, a in enumerate(answers):
        h = st.hidden(i)
        assert h.shape == a.hidden.shape
        if len(a.token_ids):
            assert float((h - a.hidden).norm() / a.hidden.norm()) < tol
        torch.testing.assert_close(st.logprobs(i), a.logprobs)
        assert st.token_ids(i) == a.token_ids
    X = st.features(layers=[0, 2])
    assert X[0].shape[1:] == (2, tiny_lm.fingerprint.hidden_size)
    assert st.prompt_hidden(results[0].prompt.id).shape == (3, tiny_lm.fingerprint.hidden_size)


def test_compact_dtypes_are_smaller(tmp_path, tiny_lm):
    sizes = {}
    for dt in ("float16", "int8"):
        _write(tmp_path / dt, tiny_lm, dt)
        sizes[dt] = Store(tmp_path / dt).bytes_on_disk()
    assert sizes["int8"] < sizes["float16"]


def test_pooled(tmp_path, tiny_lm):
    results = _write(tmp_path, tiny_lm, pool="mean")
    st = Store(tmp_path)
    a = results[0].answers[0]
    if len(a.token_ids):
        torch.testing.assert_close(st.hidden(0)[0], a.hidden.mean(0), atol=2e-3, rtol=2e-3)
    assert st.hidden(0).shape[0] == 1


def test_refuses_mixed_settings(tmp_path, tiny_lm):
    _write(tmp_path, tiny_lm)
    meta = {
        "fingerprint": tiny_lm.fingerprint.to_dict(),
        "layers": [0],
        "task": {},
        "sampling": {},
        "dtype": "float16",
        "pool": "none",
        "shard_prompts": 2,
    }
    with pytest.raises(HsrmError, match="layers"):
        StoreWriter(tmp_path, meta)


def test_not_a_store(tmp_path):
    with pytest.raises(HsrmError, match="not a sample store"):
        Store(tmp_path)


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*"))
    }


def test_resume_after_real_kill(tmp_path):
    # Batched (3 prompts per batch) with the background writer; batches straddle the 2-prompt
    # shards, so a resume re-samples prompts of finished shards and must drop them.
    args = ["--batch-prompts", "3", "--writer-queue", "1"] + [
        "--model",
        "tiny:0",
        "--n-prompts",
        "40",
        "--n",
        "4",
        "--max-new-tokens",
        "4",
        "--shard-prompts",
        "2",
        "--layers",
        "all",
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "hsrm", "sample"]
    ref = tmp_path / "ref"
    subprocess.run(cmd + ["--out", str(ref)] + args, check=True, capture_output=True, env=env)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd + ["--out", str(out)] + args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 600  # a bound for a loaded machine; the loop exits at 3 shards
    while time.time() < deadline and len(list(out.glob("shard-*.json"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list(out.glob("shard-*.json")))
    assert 3 <= n_before < 20, "the kill must land mid-run"
    subprocess.run(cmd + ["--out", str(out)] + args, check=True, capture_output=True, env=env)
    assert _digest(out) == _digest(ref)
    st, st_ref = Store(out), Store(ref)
    assert [(r["prompt_id"], r["sample"]) for r in st.records] == [
        (r["prompt_id"], r["sample"]) for r in st_ref.records
    ]
    assert len({(r["prompt_id"], r["sample"]) for r in st.records}) == 40 * 4
    assert not list(out.glob(".*tmp"))
    assert np.array_equal(st.labels, st_ref.labels)
