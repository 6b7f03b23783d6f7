"""The sampling engine: batched capture across prompts vs the one-prompt loop it replaced.

CPU, embedded model (default): samples/s of the demo task (synthetic arith+compare, N=16, 6 new
tokens, all 31 hidden states) for
  * ``legacy``: the one-prompt loop ``hsrm`` used before (one prompt's N samples per batch, a host
    copy and a host sync every step; kept below verbatim in spirit as ``legacy_sample_prompt``),
  * ``batched B=1``: today's engine one prompt at a time, and ``batched B=8/16``: B prompts x N,
each with and without capture, run alternately in one process (repeats, median) so the ratio is
fair on a machine shared with other jobs; plus the background writer's overlap (the share of
wall time the sampler waited for the disk) in a real ``hsrm sample`` run.

Model shapes (``--shape llama-3.2-1b|llama-3.1-8b|tiny --random-weights --device cuda``): a
random-init Llama of that shape in bf16 on the device (no download; the embedded SmolLM2 tokenizer,
ids beyond its vocabulary decode to nothing), tokens/s with and without capture for the batched
engine at 16..1024 rows, the one-prompt engine and HF ``generate``; bytes per token per storage
mode at that shape. ``--shape tiny --device cpu`` checks the path on a CPU.

    PYTHONPATH=src python benchmarks/bench_engine.py                       # CPU, embedded model
    PYTHONPATH=src python benchmarks/bench_engine.py --shape llama-3.1-8b --random-weights --device cuda

Writes benchmarks/results/engine[_SHAPE].json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from hsrm import lm as lmx
from hsrm.capture import (
    Answer,
    PromptResult,
    SampleConfig,
    parse_layers,
    sample_prompts,
    token_stats,
)
from hsrm.capture.base import _prompt_generator
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.models import LoadedModel, fingerprint_of, load_model
from hsrm.placement import resolve_device, resolve_dtype
from hsrm.projection import Projection, bytes_per_token
from hsrm.tasks import get_task

RESULTS = Path(__file__).parent / "results"

SHAPES: dict[str, dict[str, int]] = {
    # Llama-3.2-1B / Llama-3.1-8B configs (vocab replaced by the embedded tokenizer's, see above)
    "llama-3.2-1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8,
    ),
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# the loop hsrm used before batching (one prompt, per-step host copy and sync), for the ratio
@torch.inference_mode()
def legacy_sample_prompt(lm: LoadedModel, prompt, cfg: SampleConfig, layers, capture=True):
    model, tok = lm.model, lm.tokenizer
    device = lm.device
    decoder, head, softcap = lmx.lm_parts(model)
    eos = set(lmx.eos_ids(lm))
    g = _prompt_generator(cfg.seed, prompt.id, device)
    ids = torch.tensor([lmx.prompt_ids(tok, prompt)], device=device)
    cache = lmx.new_cache(lm)
    ckw = lmx.cache_kw(decoder, cache)
    tap = lmx.PrenormTap(decoder, layers if capture else (), lm.fingerprint.n_layers)
    try:
        out = decoder(input_ids=ids, use_cache=True, output_hidden_states=capture, **ckw)
        hs = tap.states(out.hidden_states) if capture else None
        prompt_hidden = torch.stack([hs[i][0, -1] for i in layers]).float().cpu() if hs else None
        logits = lmx.head_logits(head, softcap, out.last_hidden_state[:, -1]).expand(cfg.n, -1)
        cache.batch_repeat_interleave(cfg.n)
        pos, n = ids.shape[1], cfg.n
        tokens, lps, stats, states = [], [], [], []
        alive = torch.ones(n, dtype=torch.bool, device=device)
        lengths = torch.zeros(n, dtype=torch.long, device=device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos))
        eos_t = torch.tensor(sorted(eos), device=device)
        for step in range(cfg.max_new_tokens):
            logp = torch.log_softmax(logits, dim=-1)
            probs = torch.softmax(logits / cfg.temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=g).squeeze(-1)
            nxt = torch.where(alive, nxt, torch.full_like(nxt, pad))
            tokens.append(nxt)
            lps.append(logp.gather(-1, nxt[:, None]).squeeze(-1))
            stats.append(token_stats(logp))
            ended = alive & torch.isin(nxt, eos_t)
            lengths += (alive & ~ended).long()
            alive = alive & ~ended
            last = step == cfg.max_new_tokens - 1
            if not bool(alive.any()) or (last and not capture):
                break
            out = decoder(
                input_ids=nxt[:, None], use_cache=True, output_hidden_states=capture,
                position_ids=torch.full((n, 1), pos, device=device), **ckw,
            )  # fmt: skip
            pos += 1
            if capture:
                hs = tap.states(out.hidden_states)
                states.append(
                    torch.stack([hs[i][:, -1] for i in layers], 1).to("cpu", torch.float32)
                )
            if last:
                break
            logits = lmx.head_logits(head, softcap, out.last_hidden_state[:, -1])
    finally:
        tap.close()
    tok_mat, lp_mat = torch.stack(tokens, 1).cpu(), torch.stack(lps, 1).cpu()
    st = torch.stack(states, 1) if states else None
    answers = []
    for i in range(n):
        t = int(lengths[i])
        tid = tok_mat[i, :t].tolist()
        answers.append(
            Answer(
                token_ids=tid, text=tok.decode(tid, skip_special_tokens=True),
                hidden=st[i, :t].clone() if st is not None else None,
                logprobs=lp_mat[i, :t].clone(), entropy=lp_mat[i, :t].clone(),
            )
        )  # fmt: skip
    return PromptResult(prompt=prompt, answers=answers, prompt_hidden=prompt_hidden)


# ----------------------------------------------------------------------------------------------
def random_llama(shape: str, device: str, dtype: str, tokenizer: str = "") -> LoadedModel:
    """A random-init Llama of a real model's shape, built on the device (no download).

    ``tokenizer``: a folder saved by ``save_pretrained`` (a GPU machine without the embedded
    GGUF gets the same tokenizer that way); default: the embedded model's."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    else:
        tok = load_model(device="cpu").tokenizer  # only for its tokenizer
    cfg = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **SHAPES[shape],
    )
    td = resolve_dtype(dtype, device)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(td).eval()
    return LoadedModel(model, tok, fingerprint_of(model, f"random-{shape}", "random"))


class _HostTimer:
    """Seconds spent in ``capture._results`` (host buffers -> per-answer tensors), so the capture
    overhead can be split into the device loop and the host-side unpacking."""

    def __init__(self) -> None:
        import hsrm.capture.decode as cap

        self.cap, self.orig, self.s = cap, cap._results, 0.0

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return self.orig(*a, **k)
            finally:
                self.s += time.perf_counter() - t0

        cap._results = timed  # type: ignore[assignment]

    def take(self) -> float:
        s, self.s = self.s, 0.0
        return s


def _sync(where: LoadedModel | torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; CPU needs nothing)."""
    dev = where.device if isinstance(where, LoadedModel) else where
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_engine(
    lm, prompts, cfg, layers, capture, batch, legacy=False, refill=0, share=True
) -> tuple[float, int]:
    """Seconds and generated tokens for sampling ``prompts`` (``batch`` prompts per call; with
    ``refill`` = B, each call is a refill window of ``batch`` prompts with B decoding at once;
    ``share=False``: no shared-prefix prefill, ``capture.SHARED_PREFIX_MIN`` = 0)."""
    import hsrm.capture.batch as cap

    if not share:
        old, cap.SHARED_PREFIX_MIN = cap.SHARED_PREFIX_MIN, 0
        try:
            return time_engine(lm, prompts, cfg, layers, capture, batch, legacy, refill)
        finally:
            cap.SHARED_PREFIX_MIN = old
    _sync(lm)
    t0 = time.perf_counter()
    n_tok = 0
    for c in range(0, len(prompts), batch):
        chunk = prompts[c : c + batch]
        if legacy:
            res = [legacy_sample_prompt(lm, p, cfg, layers, capture) for p in chunk]
        else:
            res = sample_prompts(lm, chunk, cfg, layers, capture, batch_prompts=refill)
        n_tok += sum(len(a.token_ids) for r in res for a in r.answers)
    _sync(lm)
    return time.perf_counter() - t0, n_tok


def time_generate(lm, prompts, cfg, batch) -> tuple[float, int]:
    """HF ``generate`` (no states), left-padded prompts, ``cfg.n`` return sequences each."""
    tok = lm.tokenizer
    _sync(lm)
    t0 = time.perf_counter()
    n_tok = 0
    for c in range(0, len(prompts), batch):
        seqs = [lmx.prompt_ids(tok, p) for p in prompts[c : c + batch]]
        ids, mask, _ = lmx.pad(seqs, lmx.pad_id(lm), "left", lm.device)
        out = lm.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=cfg.temperature,
            top_k=0, max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.n,
            pad_token_id=lmx.pad_id(lm),
        )  # fmt: skip
        n_tok += int((out[:, ids.shape[1] :] != lmx.pad_id(lm)).sum())
    _sync(lm)
    return time.perf_counter() - t0, n_tok


def cpu_bench(args) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    lm = load_model(device="cpu")
    prompts = get_task("synthetic", n=args.prompts, families="arith,compare", seed=0).prompts()
    cfg = SampleConfig(n=16, max_new_tokens=6, temperature=0.8, seed=0)
    layers = parse_layers("all", lm.fingerprint.n_layers)
    variants = {
        "legacy one-prompt, capture": dict(capture=True, batch=1, legacy=True),
        "batched B=8, capture": dict(capture=True, batch=8),
        "batched B=8, capture, no shared prefix": dict(capture=True, batch=8, share=False),
        "batched B=8, no capture": dict(capture=False, batch=8),
        "batched B=8 + refill, capture": dict(capture=True, batch=len(prompts), refill=8),
        "batched B=16, capture": dict(capture=True, batch=16),
        "batched B=16, no capture": dict(capture=False, batch=16),
    }
    load_before = os.getloadavg()
    time_engine(lm, prompts[:2], cfg, layers, True, 2)  # warm-up
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        for name, kw in variants.items():  # alternate, so load drifts hit every variant alike
            dt, _ = time_engine(lm, prompts, cfg, layers, **kw)
            runs[name].append(len(prompts) * cfg.n / dt)
            print(f"repeat {rep}: {name}: {runs[name][-1]:.1f} samples/s", flush=True)
    # Refill matters when answer lengths vary: 32 new tokens at temperature 1.2 (some answers
    # ramble to the limit, most stop after a few tokens).
    cfg_long = SampleConfig(n=16, max_new_tokens=32, temperature=1.2, seed=0)
    long_variants = {
        "long answers: batched B=8, capture": dict(capture=True, batch=8),
        "long answers: batched B=8 + refill, capture": dict(
            capture=True, batch=len(prompts), refill=8
        ),
    }
    for name in long_variants:
        runs[name] = []
    for rep in range(args.repeats):
        for name, kw in long_variants.items():
            dt, _ = time_engine(lm, prompts, cfg_long, layers, **kw)
            runs[name].append(len(prompts) * cfg.n / dt)
            print(f"repeat {rep}: {name}: {runs[name][-1]:.1f} samples/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}

    # capture overhead: per repeat ratio no-capture/capture samples/s, median
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(runs[a], runs[b]))

    load_after = os.getloadavg()
    writer = writer_bench(lm, args)
    roof = roofline(lm, prompts, cfg, layers)
    return {
        "machine": "this 2-core CPU box, shared with other jobs while measuring",
        "load_average_1_5_15min": {"before": load_before, "after": load_after},
        "roofline": roof,
        "model": lm.fingerprint.to_dict(),
        "threads": args.threads,
        "task": f"synthetic arith+compare, {len(prompts)} prompts x N=16, 6 new tokens, 31 layers",
        "repeats": args.repeats,
        "samples_per_s": med,
        "samples_per_s_runs": runs,
        "speedup_batched_B8_vs_legacy_capture": ratio("batched B=8, capture", "legacy one-prompt, capture"),
        "speedup_batched_B16_vs_legacy_capture": ratio("batched B=16, capture", "legacy one-prompt, capture"),
        "speedup_refill_B8_vs_legacy_capture": ratio("batched B=8 + refill, capture", "legacy one-prompt, capture"),
        "speedup_shared_prefix_B8_capture": ratio(
            "batched B=8, capture", "batched B=8, capture, no shared prefix"
        ),
        "speedup_refill_vs_no_refill_B8": ratio("batched B=8 + refill, capture", "batched B=8, capture"),
        "speedup_refill_vs_no_refill_B8_long": ratio(
            "long answers: batched B=8 + refill, capture", "long answers: batched B=8, capture"
        ),
        "capture_overhead_B8": ratio("batched B=8, no capture", "batched B=8, capture"),
        "capture_overhead_B16": ratio("batched B=16, no capture", "batched B=16, capture"),
        "writer": writer,
        "reference": "17.6 samples/s: today's one-prompt loop in benchmarks/results/bon_speed.md",
    }  # fmt: skip


def _gemm_gflops(weights: list[torch.Tensor], M: int, reps: int = 7) -> float:
    """Measured GFLOP/s of ``x @ W.T`` over ``weights`` (a decoder's linears) with M-row inputs."""
    xs = {w.shape[1]: torch.randn(M, w.shape[1], dtype=w.dtype) for w in weights}
    flops = sum(2 * M * w.shape[0] * w.shape[1] for w in weights)
    lin = torch.nn.functional.linear
    for w in weights:  # warm-up
        lin(xs[w.shape[1]], w)
    best = float("inf")
    for _ in range(reps):  # best of: other jobs on the box only ever slow it down
        t0 = time.perf_counter()
        for w in weights:
            lin(xs[w.shape[1]], w)
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


@torch.inference_mode()
def roofline(lm, prompts, cfg, layers) -> dict[str, Any]:
    """Why batching cannot reach 2x on this CPU: FLOPs per sample are the same in both loops
    (one prefill per prompt, one forward per sampled token), so only GEMM efficiency at 16 vs
    128 rows can differ. Counts the matmul FLOPs of the demo task from a real run and this box's
    measured GEMM throughput on the model's own weight matrices at each row count."""
    model = lm.model
    dec = model.get_decoder()
    blocks = [
        m.weight for m in dec.modules() if isinstance(m, torch.nn.Linear) and m.weight.dim() == 2
    ]
    head = model.get_output_embeddings().weight  # (V, d)
    n_blk = sum(w.numel() for w in blocks)
    res = sample_prompts(lm, prompts, cfg, layers, True)
    P = [len(lmx.prompt_ids(lm.tokenizer, p)) for p in prompts]
    fed = sum(len(a.token_ids) for r in res for a in r.answers)  # decode tokens fed (states)
    draws = sum(
        len(a.token_ids) + (a.extra["stop"] == "eos") for r in res for a in r.answers
    )  # LM-head rows: one per drawn token (the first draw's logits come from the prefill)
    f_pre = 2 * n_blk * sum(P) + 2 * head.numel() * len(prompts)
    f_dec = 2 * n_blk * fed
    f_head = 2 * head.numel() * (draws - cfg.n * len(prompts))
    n_s = len(prompts) * cfg.n
    Pm = int(statistics.median(P))
    rate = {f"blocks M={m}": _gemm_gflops(blocks, m) for m in (cfg.n, 8 * cfg.n, Pm, 8 * Pm)} | {
        f"head M={m}": _gemm_gflops([head], m) for m in (cfg.n, 8 * cfg.n)
    }
    # Prefill: both loops run it per prompt (or per B prompts) at >= 127 rows, where the GEMMs
    # are equally efficient; credit both with the better rate.
    t_pre = f_pre / (max(rate[f"blocks M={Pm}"], rate[f"blocks M={8 * Pm}"]) * 1e9)
    legacy = (
        t_pre + f_dec / (rate[f"blocks M={cfg.n}"] * 1e9) + f_head / (rate[f"head M={cfg.n}"] * 1e9)
    )
    batched = (
        t_pre
        + f_dec / (rate[f"blocks M={8 * cfg.n}"] * 1e9)
        + f_head / (rate[f"head M={8 * cfg.n}"] * 1e9)
    )
    return {
        "prompt_tokens_median": Pm,
        "answer_tokens_per_sample": fed / n_s,
        "gflop_per_sample": {
            "prefill": f_pre / n_s / 1e9,
            "decode blocks": f_dec / n_s / 1e9,
            "decode LM head": f_head / n_s / 1e9,
        },
        "prefill_share_of_flops": f_pre / (f_pre + f_dec + f_head),
        "gemm_gflops_measured": rate,
        "gemm_bound_samples_per_s": {
            "legacy (16 rows)": n_s / legacy,
            "batched B=8": n_s / batched,
        },
        "max_speedup_from_gemm_efficiency": legacy / batched,
        "prefill_gemm_s_per_sample": t_pre / n_s,
    }


def writer_bench(lm, args) -> dict[str, Any]:
    """A real ``hsrm sample`` run with the background writer and with synchronous writes: the
    share of wall time the sampler waited for the writer."""
    import shutil
    import tempfile

    from hsrm.engines import sample
    from hsrm.sampling import SampleRunConfig
    from hsrm.store import Store

    out: dict[str, Any] = {}
    for q in (2, 0):
        d = Path(tempfile.mkdtemp(prefix="hsrm-writer-"))
        try:
            t0 = time.perf_counter()
            sample(
                SampleRunConfig(
                    out=str(d), n_prompts=args.prompts, shard_prompts=8, writer_queue=q
                ),
                lm,
                progress=False,
            )
            wall = time.perf_counter() - t0
            last = Store(d).meta["last_run"]
            out[f"writer_queue={q}"] = {
                "wall_s": wall,
                "sampler_waited_s": last["writer_wait_s"],
                "idle_share": last["writer_wait_s"] / wall,
            }
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


def equivalence_check(lm, cfg, layers, n_prompts: int = 4) -> dict[str, Any]:
    """Batched (all prompts in one batch) vs one prompt at a time on this device: the share of
    answers with identical tokens and, where they are identical, the largest state difference
    (batched matmuls may round differently in bf16, so a rare token can differ)."""
    prompts = get_task("synthetic", n=n_prompts, families="arith,compare", seed=3).prompts()
    a = sample_prompts(lm, prompts, cfg, layers, True)
    b = [r for p in prompts for r in sample_prompts(lm, [p], cfg, layers, True)]
    same, diff, n = 0, 0.0, 0
    for ra, rb in zip(a, b):
        for x, y in zip(ra.answers, rb.answers):
            n += 1
            if x.token_ids == y.token_ids:
                same += 1
                if x.hidden is not None and y.hidden is not None and len(x.token_ids):
                    diff = max(diff, float((x.hidden - y.hidden).abs().max()))
    return {"answers": n, "same_tokens": same / n, "max_state_abs_diff_when_same": diff}


def host_copy_bench(dev: torch.device, gb: float = 4.4) -> dict[str, Any]:
    """What one batch's device-to-host copy of captured states costs here (4.4 GB: 8B shape, 256
    rows x 64 steps x 33 layers, bf16): allocating pinned memory, copying into it the first and
    the second time, and a plain pageable copy."""
    n = int(gb * 1e9) // 2
    x = torch.ones(n, dtype=torch.bfloat16, device=dev)
    out: dict[str, Any] = {"bytes": 2 * n}

    def timed(key: str, fn: Any) -> Any:
        _sync(dev)
        t0 = time.perf_counter()
        y = fn()
        _sync(dev)
        out[key] = time.perf_counter() - t0
        return y

    pin = dev.type == "cuda"
    h = timed("pinned alloc s", lambda: torch.empty(n, dtype=x.dtype, pin_memory=pin))
    timed("copy into new pinned s", lambda h=h: h.copy_(x, non_blocking=True))
    timed("copy into same pinned s", lambda h=h: h.copy_(x, non_blocking=True))
    del h
    h2 = timed("pinned alloc again s", lambda: torch.empty(n, dtype=x.dtype, pin_memory=pin))
    del h2
    timed("pageable .cpu() s", lambda: x.cpu())
    return out


def shape_writer(lm, args) -> dict[str, Any]:
    """Real ``hsrm sample`` runs at this shape (256 rows per step): the share of wall time the
    sampler waited for the background writer, for a compact store and a full fp16 one."""
    import shutil
    import tempfile

    from hsrm.engines import sample
    from hsrm.sampling import SampleRunConfig
    from hsrm.store import Store

    out: dict[str, Any] = {}
    for name, kw in {
        "compact proj k=64 int8": dict(project=64, store_dtype="int8", n_prompts=64),
        "full float16": dict(n_prompts=args.writer_full_prompts),
    }.items():
        if kw["n_prompts"] <= 0:  # type: ignore[operator]
            continue
        d = Path(tempfile.mkdtemp(prefix="hsrm-writer-", dir=args.scratch or None))
        try:
            t0 = time.perf_counter()
            sample(
                SampleRunConfig(
                    out=str(d), n=16, batch_prompts=16, shard_prompts=16,
                    max_new_tokens=args.new_tokens, temperature=1.0, **kw,  # type: ignore[arg-type]
                ),
                lm,
                progress=False,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            last = Store(d).meta["last_run"]
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            out[name] = {
                "wall_s": wall,
                "sampler_waited_s": last["writer_wait_s"],
                "idle_share": last["writer_wait_s"] / wall,
                "store_bytes": size,
                "settings": kw,
            }
            print(name, out[name], flush=True)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


def shape_bench(args, save) -> dict[str, Any]:
    """``save(r)`` is called after every part, so a run cut short keeps what it measured."""
    device = resolve_device(args.device)
    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    lm = random_llama(args.shape, device, args.dtype, args.tokenizer)
    _sync(lm)
    fp = lm.fingerprint
    cfg = SampleConfig(n=16, max_new_tokens=args.new_tokens, temperature=1.0, seed=0)
    layers = parse_layers("all", fp.n_layers)
    L = fp.n_layers + 1
    dev_name = (
        torch.cuda.get_device_name() if device.startswith("cuda") else "CPU (this 2-core box)"
    )
    r: dict[str, Any] = {
        "shape": args.shape,
        "device": dev_name,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "host_threads": torch.get_num_threads(),
        "fingerprint": fp.to_dict(),
        "new_tokens": args.new_tokens,
        "model_init_s": time.perf_counter() - t0,
        "bytes_per_token_all_layers": {
            f"{m} {dt}": bytes_per_token(L, fp.hidden_size, dt, k)
            for m, k in (("full", 0), ("proj k=256", 256), ("proj k=128", 128), ("proj k=64", 64))
            for dt in ("float16", "int8")
        },
        "rows": [],
    }
    if args.check:
        r["equivalence"] = equivalence_check(lm, cfg, layers)
        print("equivalence", r["equivalence"], flush=True)
        save(r)
    if args.host_copy:
        r["host_copy"] = host_copy_bench(lm.device)
        print("host copy", r["host_copy"], flush=True)
        save(r)
    host = _HostTimer()
    pname = f"batched, capture proj k={args.project}"
    pcfg = dataclasses.replace(cfg, project=Projection(args.project) if args.project else None)
    for R in args.rows:
        B = max(1, R // cfg.n)
        prompts = get_task("synthetic", n=B, families="arith,compare", seed=1).prompts()
        time_engine(lm, prompts[:1], cfg, layers, True, 1)  # warm-up
        host.take()
        row: dict[str, Any] = {"rows": B * cfg.n, "prompts": B}
        variants: dict[str, tuple[SampleConfig, bool, int]] = {
            "batched, capture": (cfg, True, B),
            "batched, no capture": (cfg, False, B),
        }
        if args.project:
            variants[pname] = (pcfg, True, B)
        if B <= args.one_prompt_max:
            variants["one-prompt, capture"] = (cfg, True, 1)
        for name, (c, capture, batch) in variants.items():
            runs = []
            for _ in range(args.shape_repeats):  # the first call also pins its host buffers
                dt, n_tok = time_engine(lm, prompts, c, layers, capture, batch)
                runs.append((dt, host.take()))
            dt, hs = min(runs)
            row[name] = {
                "s": dt, "tokens": n_tok, "tokens_per_s": n_tok / dt, "host_s": hs,
                "all_s": [x for x, _ in runs],
            }  # fmt: skip
        if args.generate:
            dt, n_tok = time_generate(lm, prompts, cfg, B)
            row["HF generate, no states"] = {"s": dt, "tokens": n_tok, "tokens_per_s": n_tok / dt}
        bc, bn = row["batched, capture"], row["batched, no capture"]
        row["capture_overhead"] = bc["s"] / bn["s"]
        # the device loop alone: capture's time less turning host buffers into answers, against
        # no capture's time less the same unpacking of its (smaller) buffers
        row["capture_overhead_device_loop"] = (bc["s"] - bc["host_s"]) / (bn["s"] - bn["host_s"])
        if pname in row:
            row["capture_overhead_proj"] = row[pname]["s"] / bn["s"]
        r["rows"].append(row)
        print(row, flush=True)
        save(r)
    if args.writer:
        r["writer"] = shape_writer(lm, args)
        save(r)
    return r


def prefix_bench(args) -> dict[str, Any]:
    """The shared-prefix prefill on a file task with fixed few-shot exemplars (e.g. GSM8K 8-shot,
    ~1,500-token prompts of which ~1,470 are the exemplars): samples/s with it on and off, one
    batch of ``--prompts`` prompts, alternating repeats; and the tokens each way prefills."""
    import hsrm.capture as cap
    from hsrm.capture import prefix_groups

    torch.set_num_threads(args.threads)
    lm = load_model(device="cpu")
    task = get_task(args.prefix_task, limit=args.prompts, shots=args.shots, fewshot="fixed")
    prompts = task.prompts()
    cfg = SampleConfig(n=16, max_new_tokens=args.new_tokens, temperature=0.8, seed=0)
    layers = parse_layers("all", lm.fingerprint.n_layers)
    seqs = [lmx.prompt_ids(lm.tokenizer, p) for p in prompts]
    group, plen = prefix_groups(seqs, cap.SHARED_PREFIX_MIN)
    shared_tokens = sum(plen) + sum(len(sq) - plen[g] for sq, g in zip(seqs, group))
    runs: dict[str, list[float]] = {"shared prefix": [], "no shared prefix": []}
    time_engine(lm, prompts[:2], cfg, layers, True, 2)  # warm-up
    for rep in range(args.repeats):
        for name in runs:
            dt, _ = time_engine(lm, prompts, cfg, layers, True, len(prompts), share=name[0] == "s")
            runs[name].append(len(prompts) * cfg.n / dt)
            print(f"repeat {rep}: {name}: {runs[name][-1]:.2f} samples/s", flush=True)
    return {
        "machine": "this 2-core CPU box",
        "task": f"{args.prefix_task}, {len(prompts)} prompts in one batch x N=16, "
        f"{args.shots}-shot fixed exemplars, {args.new_tokens} new tokens, all layers captured",
        "threads": args.threads,
        "prompt_tokens": [len(sq) for sq in seqs],
        "prefill_tokens": {"no shared prefix": sum(map(len, seqs)), "shared prefix": shared_tokens},
        "groups": len(plen),
        "samples_per_s_runs": runs,
        "samples_per_s": {k: statistics.median(v) for k, v in runs.items()},
        "speedup": statistics.median(
            a / b for a, b in zip(runs["shared prefix"], runs["no shared prefix"])
        ),
    }


def _md_prefix(r: dict[str, Any]) -> str:
    pt, sp = r["prefill_tokens"], r["samples_per_s"]
    return "\n".join(
        [
            f"# Shared-prefix prefill on a few-shot file task, CPU ({r['machine']})",
            "",
            f"{r['task']}; {r['threads']} torch thread(s); median of "
            f"{len(r['samples_per_s_runs']['shared prefix'])} alternating repeats.",
            "",
            "| prefill | tokens prefilled | samples/s |",
            "|---|---|---|",
            f"| one padded forward | {pt['no shared prefix']:,} | {sp['no shared prefix']:.2f} |",
            f"| shared prefix ({r['groups']} group(s)) | {pt['shared prefix']:,} | "
            f"{sp['shared prefix']:.2f} |",
            "",
            f"Speed-up {r['speedup']:.2f}x (per-repeat ratio, median); prompts "
            f"{min(r['prompt_tokens'])}-{max(r['prompt_tokens'])} tokens.",
            "",
            f"Command: `{r['command']}`",
            "",
        ]
    )


def _md_cpu(r: dict[str, Any]) -> str:
    lines = [
        f"# Sampling engine, CPU ({r['machine']})",
        "",
        f"{r['task']}; {r['threads']} torch thread(s); median of {r['repeats']} alternating repeats.",
        "",
        "| variant | samples/s |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["samples_per_s"].items()]
    lines += [
        "",
        "| ratio | value |",
        "|---|---|",
        f"| batched B=8 vs legacy one-prompt, with capture | {r['speedup_batched_B8_vs_legacy_capture']:.2f}x |",
        f"| batched B=16 vs legacy one-prompt, with capture | {r['speedup_batched_B16_vs_legacy_capture']:.2f}x |",
        f"| batched B=8 + refill vs legacy one-prompt, with capture | {r['speedup_refill_B8_vs_legacy_capture']:.2f}x |",
        f"| batched B=8 with vs without the shared-prefix prefill, with capture | {r['speedup_shared_prefix_B8_capture']:.2f}x |"
        if "speedup_shared_prefix_B8_capture" in r
        else "",
        f"| batched B=8 + refill vs batched B=8 without, with capture | {r['speedup_refill_vs_no_refill_B8']:.2f}x |",
        f"| same, long answers (32 new tokens, temperature 1.2) | {r['speedup_refill_vs_no_refill_B8_long']:.2f}x |",
        f"| capture overhead, batched B=8 | {r['capture_overhead_B8']:.3f}x |",
        f"| capture overhead, batched B=16 | {r['capture_overhead_B16']:.3f}x |",
        "",
        "| writer | wall s | sampler waited s | idle share |",
        "|---|---|---|---|",
    ]
    for k, v in r["writer"].items():
        lines.append(
            f"| {k} | {v['wall_s']:.1f} | {v['sampler_waited_s']:.2f} | {100 * v['idle_share']:.1f}% |"
        )
    rf = r["roofline"]
    lines += [
        "",
        "Roofline without the shared-prefix prefill (why batching alone cannot reach 2x on this "
        "CPU): both loops then do the same FLOPs per sample "
        f"(median prompt {rf['prompt_tokens_median']} tokens, prefilled once per prompt; "
        f"{rf['answer_tokens_per_sample']:.1f} answer tokens per sample):",
        "",
        "| GFLOP per sample | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in rf["gflop_per_sample"].items()]
    lines += [
        f"| prefill share of all FLOPs | {100 * rf['prefill_share_of_flops']:.0f}% |",
        "",
        "| GEMM on the model's weights (1 thread, best of 7) | GFLOP/s |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in rf["gemm_gflops_measured"].items()]
    lines += [
        "",
        "GEMM-bound samples/s (everything but matmuls free): "
        + ", ".join(f"{k} {v:.1f}" for k, v in rf["gemm_bound_samples_per_s"].items())
        + f"; the most batching can buy here is {rf['max_speedup_from_gemm_efficiency']:.2f}x over "
        "a GEMM-bound one-prompt loop. The prefill, the same FLOPs in both loops, alone takes "
        f"{1e3 * rf['prefill_gemm_s_per_sample']:.0f} ms per sample at these rates. The 2x target is "
        f"{2 * r['samples_per_s']['legacy one-prompt, capture']:.1f} samples/s (2x the old loop as "
        "measured): without a shared prefix the batched loop would have to run at "
        f"{100 * 2 * r['samples_per_s']['legacy one-prompt, capture'] / rf['gemm_bound_samples_per_s']['batched B=8']:.0f}% "
        "of its matmul-only ceiling; it runs at "
        f"{100 * r['samples_per_s'].get('batched B=8, capture, no shared prefix', r['samples_per_s']['batched B=8, capture']) / rf['gemm_bound_samples_per_s']['batched B=8']:.0f}%, "
        "the rest being attention over the N-times repeated prompt cache, that repeat itself, "
        "norms and the vocabulary work. Prefilling the prompts' shared few-shot prefix once per "
        "group (the default) removes FLOPs this roofline counts, which is how the batched loop "
        "gets past it.",
        "",
        "Load average (1, 5, 15 min) before / after the timed runs: "
        + " / ".join(
            ", ".join(f"{x:.1f}" for x in r["load_average_1_5_15min"][k])
            for k in ("before", "after")
        )
        + " (2 cores; other helpers' jobs ran meanwhile, so the alternating ratios are what count).",
    ]
    lines += ["", f"Reference: {r['reference']}.", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def _md_shape(r: dict[str, Any]) -> str:
    def tps(row: dict[str, Any], key: str) -> str:
        v = row.get(key, {}).get("tokens_per_s")
        return "" if v is None else f"{v:.0f}"

    def x(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}x"

    lines = [
        f"# Sampling engine, random-weight {r['shape']} shape on {r['device']} ({r['dtype']}, "
        f"{r['new_tokens']} new tokens, all {r['fingerprint']['n_layers'] + 1} layers captured)",
        "",
        "| rows | batched+capture tok/s | batched no capture tok/s | capture overhead | "
        "overhead, device loop only | batched+capture projected on device tok/s | its overhead | "
        "one-prompt+capture tok/s | HF generate tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        proj = next((k for k in row if "proj" in k and isinstance(row[k], dict)), "")
        lines.append(
            f"| {row['rows']} | {tps(row, 'batched, capture')} | {tps(row, 'batched, no capture')} "
            f"| {x(row['capture_overhead'])} | {x(row.get('capture_overhead_device_loop'))} | "
            f"{tps(row, proj)} | {x(row.get('capture_overhead_proj'))} | "
            f"{tps(row, 'one-prompt, capture')} | {tps(row, 'HF generate, no states')} |"
        )
    if "host_copy" in r:
        h = r["host_copy"]
        lines += ["", f"Device-to-host copy of {h['bytes'] / 1e9:.1f} GB on this machine:", ""]
        lines += [f"- {k}: {v:.3f}" for k, v in h.items() if k != "bytes"]
    if "equivalence" in r:
        e = r["equivalence"]
        lines += [
            "",
            f"Batched vs one prompt at a time on this device ({e['answers']} answers): "
            f"{e['same_tokens']:.1%} identical tokens"
            + (
                f"; largest state difference where the tokens agree "
                f"{e['max_state_abs_diff_when_same']:.3g}."
                if e["same_tokens"] > 0
                else "."
            ),
        ]
    if "writer" in r:
        lines += [
            "",
            "| `hsrm sample` store (256 rows per step) | wall s | sampler waited for the writer | "
            "store size |",
            "|---|---|---|---|",
        ]
        for k, w in r["writer"].items():
            lines.append(
                f"| {k} ({w['settings']['n_prompts']} prompts) | {w['wall_s']:.1f} | "
                f"{w['idle_share']:.1%} | {w['store_bytes'] / 1e9:.2f} GB |"
            )
    lines += ["", "| storage mode (all layers) | bytes per token |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in r["bytes_per_token_all_layers"].items()]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None)
    ap.add_argument("--random-weights", action="store_true", help="required with --shape")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="bfloat16", help="model dtype for --shape")
    ap.add_argument("--rows", type=int, nargs="*", default=[16, 64, 256, 1024])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument(
        "--one-prompt-max", type=int, default=16, help="prompts for the one-prompt loop"
    )
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tokenizer", default="", help="--shape: tokenizer folder (default embedded)")
    ap.add_argument(
        "--prefix-task", default="", help="shared-prefix bench on this task, e.g. gsm8k:PATH"
    )
    ap.add_argument("--shots", type=int, default=8, help="--prefix-task: few-shot exemplars")
    ap.add_argument("--check", action="store_true", help="--shape: batched == one-prompt check")
    ap.add_argument("--writer", action="store_true", help="--shape: real `hsrm sample` runs")
    ap.add_argument("--writer-full-prompts", type=int, default=32, help="0 = skip the full store")
    ap.add_argument("--project", type=int, default=64, help="--shape: k of the compact capture")
    ap.add_argument("--shape-repeats", type=int, default=1, help="--shape: runs per variant (best)")
    ap.add_argument("--no-generate", dest="generate", action="store_false")
    ap.add_argument("--host-copy", action="store_true", help="--shape: time a 4.4 GB D2H copy")
    ap.add_argument("--scratch", default="", help="--writer: folder for the temporary stores")
    ap.add_argument(
        "--roofline-only",
        action="store_true",
        help="re-measure the roofline into an existing CPU result (--out) and rewrite its .md",
    )
    args = ap.parse_args()
    import sys

    cmd = "PYTHONPATH=src python benchmarks/bench_engine.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    if args.prefix_task:
        r = prefix_bench(args)
        r["command"] = cmd.strip()
        name = args.out or "engine_prefix"
        md = _md_prefix(r)
    elif args.shape:
        if not args.random_weights:
            ap.error("--shape needs --random-weights (no weights are downloaded)")
        name = args.out or f"engine_{args.shape}_{'cuda' if 'cuda' in args.device else 'cpu'}"

        def save(part: dict[str, Any]) -> None:
            part["command"] = cmd.strip()
            atomic_write_json(RESULTS / f"{name}.json", part)
            atomic_write_text(RESULTS / f"{name}.md", _md_shape(part))

        r = shape_bench(args, save)
        r["command"] = cmd.strip()
        md = _md_shape(r)
    elif args.roofline_only:
        import json

        name = args.out or "engine"
        r = json.loads((RESULTS / f"{name}.json").read_text())
        torch.set_num_threads(args.threads)
        lm = load_model(device="cpu")
        prompts = get_task("synthetic", n=args.prompts, families="arith,compare", seed=0).prompts()
        cfg = SampleConfig(n=16, max_new_tokens=6, temperature=0.8, seed=0)
        r["roofline"] = roofline(lm, prompts, cfg, parse_layers("all", lm.fingerprint.n_layers))
        r["roofline"]["command"] = cmd.strip()
        md = _md_cpu(r)
    else:
        r = cpu_bench(args)
        r["command"] = cmd.strip()
        name = args.out or "engine"
        md = _md_cpu(r)
    atomic_write_json(RESULTS / f"{name}.json", r)
    atomic_write_text(RESULTS / f"{name}.md", md)
    print(md)


if __name__ == "__main__":
    main()
