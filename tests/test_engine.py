"""The batched engine: B prompts x N samples decoded together equal one prompt at a time; capture
equals teacher forcing in a batch with rows of different lengths; sampling options; prune hook."""

import collections

import pytest
import torch

from hsrm import lm as lmx
from hsrm import placement
from hsrm.capture import SampleConfig, parse_layers, sample_prompt, sample_prompts, teacher_force
from hsrm.errors import HsrmError
from hsrm.tasks import get_task


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _same_answers(ref, got):
    """Same tokens; states, prompt states and log-probs within 1e-4."""
    assert len(ref) == len(got)
    for ra, rb in zip(ref, got):
        assert _rel(rb.prompt_hidden, ra.prompt_hidden) < 1e-4
        for a, b in zip(ra.answers, rb.answers, strict=True):
            assert a.token_ids == b.token_ids
            if a.token_ids:
                assert _rel(b.hidden, a.hidden) < 1e-4
                assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4)


def _prompts(n=5):
    # prompts of different lengths, so the batch is really padded
    return get_task("synthetic", n=n, families="arith,compare,count").prompts()


def test_batched_equals_unbatched(tiny_lm):
    ps = _prompts(5)
    lens = {len(lmx.prompt_ids(tiny_lm.tokenizer, p)) for p in ps}
    assert len(lens) > 1, "the test needs prompts of different lengths"
    cfg = SampleConfig(n=4, max_new_tokens=8, temperature=1.0, seed=2, top_logprobs=3)
    layers = parse_layers("all,prenorm", tiny_lm.fingerprint.n_layers)
    batched = sample_prompts(tiny_lm, ps, cfg, layers)
    for p, rb in zip(ps, batched):
        ru = sample_prompt(tiny_lm, p, cfg, layers)
        assert rb.prompt.id == p.id
        assert _rel(rb.prompt_hidden, ru.prompt_hidden) < 1e-4
        for a, b in zip(rb.answers, ru.answers):
            assert a.token_ids == b.token_ids
            assert a.extra["stop"] == b.extra["stop"]
            assert a.hidden.shape == b.hidden.shape
            if a.token_ids:
                assert _rel(a.hidden, b.hidden) < 1e-4
                assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4)
                assert torch.allclose(a.confidence, b.confidence, atol=1e-4)
                assert torch.equal(a.extra["top_ids"], b.extra["top_ids"])


def test_batched_capture_equals_teacher_forcing(tiny_lm):
    ps = _prompts(4)
    layers = parse_layers("all,prenorm", tiny_lm.fingerprint.n_layers)
    cfg = SampleConfig(n=6, max_new_tokens=10, temperature=1.5, seed=5)
    res = sample_prompts(tiny_lm, ps, cfg, layers)
    n_lengths = set()
    for r in res:
        answers = [a for a in r.answers if a.token_ids]
        n_lengths |= {len(a.token_ids) for a in answers}
        tf = teacher_force(tiny_lm, r.prompt, [a.token_ids for a in answers], layers)
        for a, b in zip(answers, tf):
            assert a.hidden.shape == b.hidden.shape
            assert _rel(a.hidden, b.hidden) < 1e-3
            assert _rel(a.logprobs, b.logprobs) < 1e-3
    assert len(n_lengths) > 1, "rows of different lengths must be in the batch"


def test_stream_independent_of_batch_neighbours(tiny_lm):
    ps = _prompts(6)
    cfg = SampleConfig(n=3, max_new_tokens=6, seed=4)
    a = sample_prompts(tiny_lm, ps, cfg)
    b = sample_prompts(tiny_lm, ps[3:] + ps[:3], cfg)  # other neighbours and positions
    by_id = {r.prompt.id: [x.token_ids for x in r.answers] for r in b}
    for r in a:
        assert [x.token_ids for x in r.answers] == by_id[r.prompt.id]


def test_options_change_the_draws_as_they_should(tiny_lm):
    p = _prompts(1)[0]
    greedy = sample_prompt(tiny_lm, p, SampleConfig(n=3, max_new_tokens=5, temperature=0))
    assert len({tuple(a.token_ids) for a in greedy.answers}) == 1
    top1 = sample_prompt(tiny_lm, p, SampleConfig(n=3, max_new_tokens=5, top_k=1, temperature=2))
    assert [a.token_ids for a in top1.answers] == [a.token_ids for a in greedy.answers]
    minp1 = sample_prompt(tiny_lm, p, SampleConfig(n=3, max_new_tokens=5, min_p=1.0))
    assert [a.token_ids for a in minp1.answers] == [a.token_ids for a in greedy.answers]
    free = sample_prompt(tiny_lm, p, SampleConfig(n=8, max_new_tokens=5, temperature=2))
    assert len({tuple(a.token_ids) for a in free.answers}) > 1


def test_stop_strings(tiny_lm):
    p = _prompts(1)[0]
    cfg = SampleConfig(n=8, max_new_tokens=12, temperature=1.5, seed=1)
    free = sample_prompt(tiny_lm, p, cfg)
    # a stop string that occurs in at least one free answer
    text = next(a.text for a in free.answers if len(a.text) >= 3)
    stop = text[1:3]
    cfg2 = SampleConfig(n=8, max_new_tokens=12, temperature=1.5, seed=1, stop=(stop,))
    stopped = sample_prompt(tiny_lm, p, cfg2)
    hits = 0
    for a, b in zip(free.answers, stopped.answers):
        assert a.token_ids[: len(b.token_ids)] == b.token_ids  # same stream, cut earlier
        if b.extra["stop"] == "stop":
            hits += 1
            assert stop not in b.text
            assert b.hidden.shape[0] == len(b.token_ids)
    assert hits >= 1


def test_prune_hook_stops_rows(tiny_lm):
    ps = _prompts(2)
    cfg = SampleConfig(n=4, max_new_tokens=8, temperature=1.0, seed=3)
    full = sample_prompts(tiny_lm, ps, cfg)
    seen = []

    def prune(step, view):
        seen.append((step, tuple(view.tokens.shape), tuple(view.states.shape)))
        stop = torch.zeros(view.alive.shape[0], dtype=torch.bool)
        if step == 1:
            stop[::2] = True  # stop every even row after 2 tokens
        return stop

    pruned = sample_prompts(tiny_lm, ps, cfg, prune=prune)
    n_pruned = 0
    assert seen[0][1] == (1, 8) and seen[0][2][:2] == (1, 8)
    for rf, rp in zip(full, pruned):
        for j, (a, b) in enumerate(zip(rf.answers, rp.answers)):
            if j % 2 == 0 and len(a.token_ids) >= 2:  # alive after step 1: cut there
                n_pruned += 1
                assert b.token_ids == a.token_ids[:2]
                assert b.extra["stop"] == "pruned"
                assert b.hidden.shape[0] == 2
            else:  # odd rows, and rows that had ended before the hook asked, are untouched
                assert b.token_ids == a.token_ids
                assert b.extra["stop"] == a.extra["stop"]
    assert n_pruned >= 1


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_bad_sampling_options(kw, match):
    with pytest.raises(HsrmError, match=match):
        SampleConfig(**kw).validate()


def test_bad_device_and_dtype():
    with pytest.raises(HsrmError, match="unknown device"):
        placement.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(HsrmError, match="no CUDA"):
            placement.resolve_device("cuda")
    with pytest.raises(HsrmError, match="unknown model dtype"):
        placement.resolve_dtype("float8", "cpu")
    with pytest.raises(HsrmError, match="float16 is not supported"):
        placement.resolve_dtype("float16", "cpu")
    assert placement.resolve_device("cpu") == "cpu"


def test_auto_dtype_is_one_rule_bf16_where_the_cpu_computes_it_natively(tmp_path, monkeypatch):
    """``auto`` means the same in every command (``ModelConfig.resolve``): bf16 on GPUs and on
    CPUs with native bf16, float32 on other CPUs, float16 on mps (which refuses bf16)."""
    from hsrm.models import ModelConfig

    zen4 = tmp_path / "zen4"
    zen4.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    old = tmp_path / "old"
    old.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert placement.cpu_bf16_native(str(zen4)) and not placement.cpu_bf16_native(str(old))
    assert not placement.cpu_bf16_native(str(tmp_path / "absent"))
    monkeypatch.setattr(placement, "cpu_bf16_native", lambda: True)
    assert placement.auto_dtype("cpu") == "bfloat16"
    assert ModelConfig(device="cpu").resolve().dtype == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert placement.auto_dtype("cuda:1") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert placement.auto_dtype("cuda") == "float16"
    assert placement.auto_dtype("mps") == "float16"
    monkeypatch.setattr(placement, "cpu_bf16_native", lambda: False)
    assert placement.auto_dtype("cpu") == "float32"
    assert ModelConfig(device="cpu").resolve() == ModelConfig(device="cpu", dtype="float32")
    # a given dtype is kept, and checked against the device before any weights are read
    assert ModelConfig(dtype="bfloat16", device="cpu").resolve().dtype == "bfloat16"
    with pytest.raises(HsrmError, match="float16 is not supported"):
        ModelConfig(dtype="float16", device="cpu").resolve()
    # Ray workers: `auto` is the CPU unless they are given GPUs (not the driver's device)
    assert ModelConfig().resolve_workers(0).device == "cpu"
    if not torch.cuda.is_available():
        assert ModelConfig().resolve_workers(1) == ModelConfig(device="cuda", dtype="bfloat16")


def test_pad_sides():
    ids, mask, pos = lmx.pad([[1, 2, 3], [4]], 0, "left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and pos[1, -1] == 0
    ids, mask, pos = lmx.pad([[1, 2, 3], [4]], 0, "right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist()[1] == [1, 0, 0]
    with pytest.raises(HsrmError, match="padding side"):
        lmx.pad([[1]], 0, "middle")


# ----------------------------------------------------------------------------------------------
# the store pipeline
def _sample_cfg(out, **kw):
    from hsrm.sampling import SampleRunConfig

    base = dict(
        out=str(out),
        model="tiny:0",
        n_prompts=10,
        n=3,
        max_new_tokens=5,
        shard_prompts=4,
        layers="all",
        families="arith,compare,count",
    )
    return SampleRunConfig(**{**base, **kw})


def test_batched_store_equals_unbatched_store(tmp_path, tiny_lm):
    from hsrm.engines import sample

    one = sample(_sample_cfg(tmp_path / "b1", batch_prompts=1, writer_queue=0), tiny_lm, False)
    many = sample(_sample_cfg(tmp_path / "b3", batch_prompts=3), tiny_lm, False)
    big = sample(_sample_cfg(tmp_path / "b16", batch_prompts=16), tiny_lm, False)
    assert len(one) == len(many) == len(big) == 30
    for st in (many, big):
        assert [r["prompt_id"] for r in st.records] == [r["prompt_id"] for r in one.records]
        assert [r["text"] for r in st.records] == [r["text"] for r in one.records]
        for i in range(len(one)):
            assert st.token_ids(i) == one.token_ids(i)
            if one.records[i]["n_tokens"]:
                assert _rel(st.hidden(i), one.hidden(i)) < 2e-3  # float16 store
                assert torch.allclose(st.logprobs(i), one.logprobs(i), atol=1e-4)


def test_skip_prompts_samples_the_tasks_next_prompts(tmp_path, tiny_lm):
    """A store of the task's prompts 6-9 (``skip_prompts``) holds exactly those of a 10-prompt
    store, samples included (each prompt draws from its own stream), and one union reads both."""
    from hsrm.bon.evaluate import _same_task
    from hsrm.engines import sample
    from hsrm.store import StoreUnion

    full = sample(_sample_cfg(tmp_path / "full"), tiny_lm, False)
    first = sample(_sample_cfg(tmp_path / "first", n_prompts=6), tiny_lm, False)
    rest = sample(_sample_cfg(tmp_path / "rest", n_prompts=4, skip_prompts=6), tiny_lm, False)
    assert rest.meta["task"]["skip_prompts"] == 6 and "skip_prompts" not in full.meta["task"]
    assert [r["text"] for r in rest.records] == [r["text"] for r in full.records[18:]]
    assert set(rest.prompt_ids).isdisjoint(first.prompt_ids)
    assert _same_task(rest.meta["task"], full.meta["task"])  # ids name the same prompts
    both = StoreUnion([first, rest])
    assert len(both) == 30 and list(both.prompt_ids) == list(full.prompt_ids)
    assert list(both.labels) == list(full.labels)
    F, G = both.features([17, 18]), full.features([17, 18])
    for i in range(2):
        assert torch.equal(F[i], G[i])
    assert len(both.features()) == 30


def test_model_and_store_dtypes_are_separate_keys(tmp_path):
    from hsrm.config import from_sources
    from hsrm.sampling import SampleRunConfig

    cfg = from_sources(SampleRunConfig, {"store_dtype": "int8"})
    assert cfg.store_dtype == "int8" and cfg.dtype == "auto"
    with pytest.raises(HsrmError, match="batch_prompts"):
        SampleRunConfig(batch_prompts=0)


@pytest.mark.parametrize(
    "kw,match",
    [({"min_p": 2.0}, "min_p"), ({"device": "tpu"}, "unknown device"), ({"top_k": -3}, "top_k")],
)
def test_pipeline_bad_options_write_nothing(tmp_path, kw, match):
    from hsrm.engines import sample

    with pytest.raises(HsrmError, match=match):
        sample(_sample_cfg(tmp_path / "o", **kw), progress=False)
    assert not (tmp_path / "o" / "meta.json").exists()


def test_cli_bad_options_exit_2(tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "hsrm", "sample", "--model", "tiny:0", "--n-prompts", "2"]
    for extra, msg in [
        (["--top-k", "-1"], "--top-k"),
        (["--dtype", "float16", "--device", "cpu"], "float16 is not supported"),
    ]:
        out = tmp_path / f"o{len(msg)}"
        r = subprocess.run(base + ["--out", str(out)] + extra, capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr and "Traceback" not in r.stderr
        assert not (out / "meta.json").exists()


# ----------------------------------------------------------------------------------------------
# compact (projected) stores
def test_projected_store_and_heads_refuse_mixing(tmp_path, tiny_lm):
    from hsrm.engines import sample
    from hsrm.heads.base import make_head
    from hsrm.projection import Projection, project_features

    full = sample(_sample_cfg(tmp_path / "full", n=4), tiny_lm, False)
    proj = sample(_sample_cfg(tmp_path / "proj", n=4, project=8, project_seed=1), tiny_lm, False)
    assert proj.meta["projection"] == {"k": 8, "seed": 1, "kind": "gaussian"}
    assert proj.fingerprint.hidden_size == 8 and "+proj:gaussian:k8:s1" in proj.fingerprint.revision
    assert proj.model_fingerprint == full.fingerprint
    # the store holds exactly the projection of the full states (float16 both ways)
    P = Projection(8, 1)
    Xf, Xp = full.features(), proj.features()
    view = project_features(Xf, P)
    assert view.fingerprint == Xp.fingerprint and view.layers == Xp.layers
    for i in range(len(full)):
        if full.records[i]["n_tokens"]:
            assert Xp[i].shape[-1] == 8
            assert _rel(Xp[i], view[i]) < 5e-3
    assert Xp.padded(range(3))[0].shape[-1] == 8
    y, g = proj.labels, proj.prompt_ids
    y = (torch.arange(len(y)) % 2).numpy() if len(set(y)) < 2 else y
    head = make_head("probe").fit(Xp, y, g)
    head.score(view)  # raw states + the same projection: accepted
    with pytest.raises(HsrmError, match="trained on"):
        head.score(Xf)  # raw states: refused
    other = sample(_sample_cfg(tmp_path / "p2", n=4, project=8, project_seed=2), tiny_lm, False)
    with pytest.raises(HsrmError, match="trained on"):
        head.score(other.features())  # another projection: refused
    with pytest.raises(HsrmError, match="projection"):
        sample(_sample_cfg(tmp_path / "proj", n=4, project=16), tiny_lm, False)  # no mixing


@pytest.mark.parametrize("batch_prompts", [0, 2])  # one batch; refill with 2 slots
def test_projection_on_device_equals_projecting_after(tiny_lm, batch_prompts):
    """SampleConfig.project projects inside the loop (only (T, L, k) leaves the device): the
    answers equal the full capture projected afterwards, prompt states included."""
    import dataclasses

    from hsrm.projection import Projection

    ps = _prompts(4)
    cfg = SampleConfig(n=3, max_new_tokens=7, temperature=1.2, seed=4)
    layers = parse_layers("all", tiny_lm.fingerprint.n_layers)
    P = Projection(5, seed=3)
    full = sample_prompts(tiny_lm, ps, cfg, layers, batch_prompts=batch_prompts)
    pcfg = dataclasses.replace(cfg, project=P)
    proj = sample_prompts(tiny_lm, ps, pcfg, layers, batch_prompts=batch_prompts)
    for rf, rp in zip(full, proj):
        assert rp.projected == P.tag() and rf.projected == ""
        assert _rel(rp.prompt_hidden, P.apply(rf.prompt_hidden, layers)) < 1e-5
        for a, b in zip(rf.answers, rp.answers):
            assert a.token_ids == b.token_ids
            assert b.hidden.shape == (len(a.token_ids), len(layers), 5)
            if a.token_ids:
                assert _rel(b.hidden, P.apply(a.hidden, layers)) < 1e-5


def test_store_refuses_states_projected_another_way(tmp_path, tiny_lm):
    import dataclasses

    from hsrm.engines import sample
    from hsrm.projection import Projection
    from hsrm.store import StoreWriter

    st = sample(_sample_cfg(tmp_path / "p", n=2, n_prompts=2, project=8), tiny_lm, False)
    layers = st.layers
    cfg = SampleConfig(n=2, max_new_tokens=3, project=Projection(8, seed=9))
    res = sample_prompts(tiny_lm, _prompts(1), cfg, layers)
    w = StoreWriter(tmp_path / "p", dict(st.meta))
    try:
        with pytest.raises(HsrmError, match="projected as"):
            w.write_shard(7, res, [[("", False)] * 2])
        ok = sample_prompts(tiny_lm, _prompts(1), dataclasses.replace(cfg, project=None), layers)
        w.write_shard(7, ok, [[("", False)] * 2])  # raw states: the store projects them
    finally:
        w.close()


def test_prefix_groups():
    from hsrm.capture import prefix_groups

    a, b = list(range(40)), list(range(100, 140))
    seqs = [a + [1, 2], b + [7], a + [3], [5] * 30, b + [8, 9], a[:30] + [4]]
    group, plen = prefix_groups(seqs, 16)
    # the three a-prompts share 30 tokens (saving 2 x 30, more than the two long ones' 1 x 40),
    # the b-prompts 40; [5]*30 alone
    assert group[0] == group[2] == group[5] and plen[group[0]] == 30
    assert group[1] == group[4] and plen[group[1]] == 40
    assert len(set(group)) == 3 and plen[group[3]] == 29  # a singleton keeps its last token
    group, plen = prefix_groups(seqs, 41)  # nothing shares 41 tokens
    assert len(plen) == len(seqs)
    assert prefix_groups([[1, 2, 3]] * 3, 1) == ([0, 0, 0], [2])  # identical prompts
    # two families behind one system prompt: two groups, not one sharing the system prompt only
    sys_, fa, fb = list(range(20)), list(range(50, 110)), list(range(200, 260))
    seqs = [sys_ + fa + [1], sys_ + fb + [2], sys_ + fa + [3], sys_ + fb + [4]]
    group, plen = prefix_groups(seqs, 16)
    assert group == [0, 1, 0, 1] and plen == [80, 80]


def test_shared_prefix_prefill_equals_one_padded_forward(tiny_lm, monkeypatch):
    """Prompts with the same few-shot exemplars prefill them once (SHARED_PREFIX_MIN); the answers
    equal those of one left-padded prefill: same tokens, states within tolerance."""
    import hsrm.capture.batch as cap

    ps = _prompts(6)
    seqs = [lmx.prompt_ids(tiny_lm.tokenizer, p) for p in ps]
    group, plen = cap.prefix_groups(seqs, cap.SHARED_PREFIX_MIN)
    assert len(plen) < len(ps) and min(plen) > 100, "the test needs shared few-shot prefixes"
    cfg = SampleConfig(n=3, max_new_tokens=6, temperature=1.0, seed=5, top_logprobs=2)
    layers = parse_layers("all", tiny_lm.fingerprint.n_layers)
    shared = sample_prompts(tiny_lm, ps, cfg, layers)
    monkeypatch.setattr(cap, "SHARED_PREFIX_MIN", 0)
    _same_answers(sample_prompts(tiny_lm, ps, cfg, layers), shared)


def test_capture_in_host_flushed_chunks_equals_one_buffer(tiny_lm, monkeypatch):
    import hsrm.capture.batch as cap

    ps = _prompts(3)
    cfg = SampleConfig(n=3, max_new_tokens=9, temperature=1.5, seed=6)
    whole = sample_prompts(tiny_lm, ps, cfg)
    L = tiny_lm.fingerprint.n_layers + 1
    monkeypatch.setattr(
        cap, "CAPTURE_BUFFER_BYTES", 2 * 9 * L * tiny_lm.fingerprint.hidden_size * 4
    )
    chunked = sample_prompts(tiny_lm, ps, cfg)  # 2 steps per on-device chunk
    for ra, rb in zip(whole, chunked):
        for a, b in zip(ra.answers, rb.answers):
            assert a.token_ids == b.token_ids
            assert torch.equal(a.hidden, b.hidden)


def test_resume_in_process(tmp_path, tiny_lm):
    from hsrm.engines import sample

    a = sample(_sample_cfg(tmp_path / "r", n_prompts=6), tiny_lm, False)
    for p in sorted((tmp_path / "r").glob("shard-00001.*")):
        p.unlink()  # as if killed before shard 1 was written
    b = sample(_sample_cfg(tmp_path / "r", n_prompts=6), tiny_lm, False)
    assert len(b) == len(a) == 18
    assert [r["text"] for r in b.records] == [r["text"] for r in a.records]


def test_resume_refuses_another_model_dtype_before_the_model_loads(tmp_path, monkeypatch):
    """float32 and bf16 draw different samples: a store is not resumed in the other dtype (one
    message naming the store, the field and both values, before any weights load), except one
    written before stores recorded it (nothing to compare)."""
    import json

    import hsrm.sampling
    from hsrm.engines import sample

    out = tmp_path / "r"
    a = sample(_sample_cfg(out, n_prompts=6, dtype="bfloat16", device="cpu"), progress=False)
    assert (a.meta["model_dtype"], a.meta["model_device"]) == ("bfloat16", "cpu")
    for p in sorted(out.glob("shard-00001.*")):
        p.unlink()

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the store was checked")

    with monkeypatch.context() as m:
        m.setattr(hsrm.sampling, "load_model", no_load)
        m.setattr(placement, "cpu_bf16_native", lambda: False)  # auto: float32 here
        for dtype in ("float32", "auto"):
            with pytest.raises(HsrmError) as e:
                sample(_sample_cfg(out, n_prompts=6, dtype=dtype), progress=False)
            assert str(e.value).startswith(f"{out / 'meta.json'}: the store was sampled with ")
            assert "model_dtype='bfloat16'" in str(e.value)
            assert "model_dtype='float32'" in str(e.value) and "--dtype bfloat16" in str(e.value)
    # `auto` where it resolves to the store's dtype resumes it, and the store stays whole
    monkeypatch.setattr(placement, "cpu_bf16_native", lambda: True)
    b = sample(_sample_cfg(out, n_prompts=6), progress=False)
    assert len(b) == 18 and b.meta["model_dtype"] == "bfloat16"
    meta = json.loads((out / "meta.json").read_text())
    del meta["model_dtype"]
    (out / "meta.json").write_text(json.dumps(meta))
    for p in sorted(out.glob("shard-00001.*")):
        p.unlink()
    c = sample(_sample_cfg(out, n_prompts=6, dtype="float32"), progress=False)
    assert len(c) == 18 and "model_dtype" not in c.meta


def test_store_that_recorded_auto_resumes_only_in_what_auto_meant_then(tmp_path, monkeypatch):
    """Stores written when ``sample`` recorded ``auto`` unresolved: it meant float32 on CPUs."""
    import json

    from hsrm.engines import sample

    out = tmp_path / "r"
    monkeypatch.setattr(placement, "cpu_bf16_native", lambda: False)
    sample(_sample_cfg(out, n_prompts=6), progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model_dtype"] == "float32"  # resolved, never `auto`
    meta["model_dtype"] = "auto"
    del meta["model_device"]
    (out / "meta.json").write_text(json.dumps(meta))
    for p in sorted(out.glob("shard-00001.*")):
        p.unlink()
    monkeypatch.setattr(placement, "cpu_bf16_native", lambda: True)  # auto is bf16 on this cpu now
    with pytest.raises(HsrmError, match=r"model_dtype='auto' \(float32 on cpu then\).*'bfloat16'"):
        sample(_sample_cfg(out, n_prompts=6), progress=False)
    b = sample(_sample_cfg(out, n_prompts=6, dtype="float32"), progress=False)
    assert len(b) == 18 and b.meta["model_dtype"] == "auto"


def test_sample_refuses_a_dtype_its_given_model_is_not_in(tmp_path, tiny_lm):
    from hsrm.engines import sample

    with pytest.raises(HsrmError, match="dtype 'bfloat16' asked for.*passed in is float32"):
        sample(_sample_cfg(tmp_path / "r", n_prompts=2, dtype="bfloat16"), tiny_lm, False)
    assert (
        sample(_sample_cfg(tmp_path / "r", n_prompts=2), tiny_lm, False).meta["model_dtype"]
        == "float32"
    )


# ----------------------------------------------------------------------------------------------
# refill: a finished prompt's slot goes to the next prompt
@pytest.mark.parametrize("capture", [True, False])
def test_refill_equals_one_batch(tiny_lm, capture):
    ps = _prompts(7)
    layers = parse_layers("all,prenorm", tiny_lm.fingerprint.n_layers)
    for kw in (
        dict(n=3, max_new_tokens=9, temperature=1.5, seed=3, top_logprobs=2),
        dict(n=2, max_new_tokens=1, seed=1),  # every prompt ends at its first step
    ):
        cfg = SampleConfig(**kw)
        ref = sample_prompts(tiny_lm, ps, cfg, layers, capture=capture)
        lengths = {len(a.token_ids) for r in ref for a in r.answers}
        for B in (1, 3):
            got = sample_prompts(tiny_lm, ps, cfg, layers, capture=capture, batch_prompts=B)
            assert [r.prompt.id for r in got] == [p.id for p in ps]
            for ra, rb in zip(ref, got):
                if capture:
                    assert _rel(rb.prompt_hidden, ra.prompt_hidden) < 1e-4
                for a, b in zip(ra.answers, rb.answers):
                    assert a.token_ids == b.token_ids  # each prompt's own stream
                    assert a.extra["stop"] == b.extra["stop"]
                    assert a.extra["eos_logprob"] == pytest.approx(b.extra["eos_logprob"], abs=1e-4)
                    if capture:
                        assert a.hidden.shape == b.hidden.shape
                    if a.token_ids:
                        if capture:
                            assert _rel(b.hidden, a.hidden) < 1e-4
                        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4)
                        assert torch.allclose(a.entropy, b.entropy, atol=1e-4)
    assert len(lengths) > 1 or kw["max_new_tokens"] == 1


def test_refill_joiners_share_their_prefix(tiny_lm, monkeypatch):
    """Prompts joining a refill batch prefill their shared exemplars once per family, so rows
    have pads inside them and the columns a join keeps span more than any row's tokens; the
    answers equal one plain batch's."""
    import hsrm.capture.batch as cap

    ps = get_task("synthetic", n=8, families="arith,compare,count", hi=100000).prompts()
    seqs = [lmx.prompt_ids(tiny_lm.tokenizer, p) for p in ps]
    group, plen = cap.prefix_groups(seqs[:4], cap.SHARED_PREFIX_MIN)
    assert len(plen) < 4  # the first four join with a shared prefix ...
    own = max(len(sq) - plen[g] for sq, g in zip(seqs[:4], group))
    assert max(plen) + own > max(len(sq) for sq in seqs[:4])  # ... wider than any row
    layers = parse_layers("all", tiny_lm.fingerprint.n_layers)
    cfg = SampleConfig(n=3, max_new_tokens=7, temperature=1.5, seed=8)
    got = sample_prompts(tiny_lm, ps, cfg, layers, batch_prompts=4)
    monkeypatch.setattr(cap, "SHARED_PREFIX_MIN", 0)
    _same_answers(sample_prompts(tiny_lm, ps, cfg, layers), got)


def test_refill_rows_match_teacher_forcing(tiny_lm):
    # rows of prompts that joined the batch late (left-padded into a running batch) still get
    # the states a teacher-forced pass gives
    ps = _prompts(5)
    layers = parse_layers("all", tiny_lm.fingerprint.n_layers)
    cfg = SampleConfig(n=3, max_new_tokens=10, temperature=1.5, seed=5)
    for r in sample_prompts(tiny_lm, ps, cfg, layers, batch_prompts=2):
        answers = [a for a in r.answers if a.token_ids]
        tf = teacher_force(tiny_lm, r.prompt, [a.token_ids for a in answers], layers)
        for a, b in zip(answers, tf):
            assert _rel(a.hidden, b.hidden) < 1e-3


@pytest.mark.parametrize("batch_prompts", [0, 1])
def test_stop_token_state_is_captured(tiny_lm, batch_prompts):
    # The token that completes a stop string is part of the answer; its state must be the real
    # one (it used to be left zero when its row was dropped from the batch at that step).
    ps = _prompts(3)
    layers = parse_layers("all", tiny_lm.fingerprint.n_layers)
    cfg0 = SampleConfig(n=6, max_new_tokens=12, temperature=1.5, seed=1)
    free = sample_prompts(tiny_lm, ps, cfg0, layers)
    # the most common character: most rows stop, at the same steps, so rows are dropped from
    # the batch right when they stop (and when all have, the loop ends)
    stop = collections.Counter(ch for r in free for a in r.answers for ch in a.text).most_common(1)
    stop = stop[0][0]
    cfg = SampleConfig(n=6, max_new_tokens=12, temperature=1.5, seed=1, stop=(stop,))
    hits = 0
    for r in sample_prompts(tiny_lm, ps, cfg, layers, batch_prompts=batch_prompts):
        for a in r.answers:
            if a.extra["stop"] != "stop":
                continue
            hits += 1
            (tf,) = teacher_force(tiny_lm, r.prompt, [a.token_ids], layers)
            assert _rel(a.hidden, tf.hidden) < 1e-3
            assert float(a.hidden[-1].norm()) > 0
    assert hits >= 3


def test_refill_store_equals_plain_store_and_resumes(tmp_path, tiny_lm):
    from hsrm.capture.windows import batch_window, sample_window, window_prompts
    from hsrm.engines import sample

    plain = sample(_sample_cfg(tmp_path / "plain", batch_prompts=2), tiny_lm, False)
    kw = dict(batch_prompts=2, refill_window=3)
    refill = sample(_sample_cfg(tmp_path / "refill", **kw), tiny_lm, False)
    assert refill.meta["refill_window"] == 3
    assert [r["text"] for r in refill.records] == [r["text"] for r in plain.records]
    for i in range(len(plain)):
        assert refill.token_ids(i) == plain.token_ids(i)
        if plain.records[i]["n_tokens"]:
            assert _rel(refill.hidden(i), plain.hidden(i)) < 2e-3  # float16 store
    # resume: windows of 3 straddle the 4-prompt shards; the redone shard is byte-identical
    shard = tmp_path / "refill" / "shard-00001.safetensors"
    before = shard.read_bytes()
    for p in sorted((tmp_path / "refill").glob("shard-00001.*")):
        p.unlink()
    sample(_sample_cfg(tmp_path / "refill", **kw), tiny_lm, False)
    assert shard.read_bytes() == before
    # what another engine (Ray) samples for shard 1 alone is the same prompts' same results
    from hsrm.sampling import sample_inputs

    scfg, _, prompts = sample_inputs(_sample_cfg(tmp_path / "x", **kw))
    W = window_prompts(2, 3)
    a, b = batch_window(1, 4, W, len(prompts))
    res = sample_window(tiny_lm, prompts[a:b], a, 4, 8, W, scfg, refill.layers, 2)
    assert [r.prompt.id for r in res] == [p.id for p in prompts[4:8]]
    for r in res:
        for j, ans in enumerate(r.answers):
            i = next(k for k, rec in enumerate(refill.records) if rec["prompt_id"] == r.prompt.id)
            assert ans.token_ids == refill.token_ids(i + j)
