"""hsrm serve and hsrm score: a real uvicorn server on 127.0.0.1 hit by the official openai client.

The tiny model's LM head gets a bias that allows only printable ASCII and the end-of-turn token,
so every sampled text re-tokenises to the sampled ids and "the same text" scores the same through
``/v1/score`` and ``hsrm score`` as it did while being sampled.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from hsrm.capture import SampleConfig, sample_prompts  # noqa: E402
from hsrm.cli import main  # noqa: E402
from hsrm.features import TokenFeatures  # noqa: E402
from hsrm.heads import make_head  # noqa: E402
from hsrm.heads.base import Head  # noqa: E402
from hsrm.models import tiny_model  # noqa: E402
from hsrm.scoring import Scorer  # noqa: E402
from hsrm.serve import ServeConfig, create_app  # noqa: E402
from hsrm.tasks.base import Prompt  # noqa: E402

LAYERS = (1, 2)
MODEL = "tiny:0"
# Raw HTTP goes through httpx; the openai client gets a plain float, the one timeout type every
# release of it accepts (3.x is built on httpx2 and refuses an httpx.Timeout).
TIMEOUT = httpx.Timeout(300, connect=120)
CLIENT_TIMEOUT = 300.0
_http = httpx.Client(timeout=TIMEOUT)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def ascii_lm(seed: int = 0):
    """tiny_model(seed) whose LM head can only emit printable ASCII and <|im_end|>."""
    lm = tiny_model(seed=seed)
    tok, model = lm.tokenizer, lm.model
    W = model.get_output_embeddings().weight.detach().clone()
    head = torch.nn.Linear(W.shape[1], W.shape[0], bias=True)
    head.weight = torch.nn.Parameter(W)
    bias = torch.full((W.shape[0],), -1e4)
    allowed = [tok.convert_tokens_to_ids(c) for c in "abcdefghij0123456789"]
    allowed += tok(" ", add_special_tokens=False)["input_ids"]
    allowed.append(tok.eos_token_id)
    bias[allowed] = 0.0
    head.bias = torch.nn.Parameter(bias)
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return lm


@pytest.fixture(scope="module")
def lm():
    return ascii_lm(0)


@pytest.fixture(scope="module")
def head_dir(lm, tmp_path_factory):
    """A probe fit on the tiny model's own samples: answers with more digits than letters are good."""
    prompts = [
        Prompt(id=f"p{i}", messages=({"role": "user", "content": f"count {i}"},), answer="")
        for i in range(8)
    ]
    res = sample_prompts(lm, prompts, SampleConfig(n=6, max_new_tokens=6, seed=0), LAYERS)
    answers = [a for r in res for a in r.answers if a.token_ids]
    y = np.array(
        [sum(c.isdigit() for c in a.text) > sum(c.isalpha() for c in a.text) for a in answers]
    )
    assert 0 < y.mean() < 1
    X = TokenFeatures.from_tensors([a.hidden for a in answers], LAYERS, lm.fingerprint)
    head = make_head("probe", layer=2).fit(X, y.astype(int))
    out = tmp_path_factory.mktemp("head") / "probe"
    head.save(out)
    return out


class Live:
    """A uvicorn server in a thread on a free loopback port."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "server failed to start"
            time.sleep(0.01)

    def close(self):
        self.server.should_exit = True
        self.thread.join(30)

    def client(self, key: str = "unused", **kw):
        # generous timeouts: the test machine may be shared and slow; nothing here is timed
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT, **kw
        )


def _cfg(head_dir, **kw):
    base = dict(head=str(head_dir), model=MODEL, best_of=4, default_max_tokens=8, max_tokens=64)
    base.update(kw)
    return ServeConfig(**base)


@pytest.fixture(scope="module")
def server(lm, head_dir):
    s = Live(create_app(_cfg(head_dir), lm, Head.load(head_dir)))
    yield s
    s.close()


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


# -- completions and chat ------------------------------------------------------------------------
def test_completions_best_of_ranked_by_head_and_equal_to_score(server, lm, head_dir, tmp_path):
    c = server.client()
    full = c.completions.create(
        model=MODEL, prompt="Q: count\nA:", n=5, best_of=5, max_tokens=8, seed=3
    )
    best = c.completions.create(
        model=MODEL, prompt="Q: count\nA:", n=2, best_of=5, max_tokens=8, seed=3
    )
    scores = [ch.model_extra["hsrm"]["score"] for ch in full.choices]
    assert scores == sorted(scores, reverse=True)
    assert [ch.model_extra["hsrm"]["rank"] for ch in full.choices] == [1, 2, 3, 4, 5]
    # the same seed draws the same 5 answers: n=2 returns the two the head ranks first
    assert [ch.text for ch in best.choices] == [ch.text for ch in full.choices[:2]]
    assert best.usage.completion_tokens == full.usage.completion_tokens >= 5
    assert best.usage.prompt_tokens == len(lm.tokenizer("Q: count\nA:")["input_ids"])

    texts = [ch.text for ch in full.choices]
    via_api = _http.post(
        f"{server.url}/v1/score", json={"prompt": "Q: count\nA:", "completions": texts}
    ).json()["scores"]
    np.testing.assert_allclose(via_api, scores, rtol=1e-4, atol=1e-4)
    # `hsrm score` on the same texts gives the same numbers
    inp, out = tmp_path / "answers.jsonl", tmp_path / "scores.jsonl"
    inp.write_text(
        "".join(json.dumps({"prompt": "Q: count\nA:", "completion": t}) + "\n" for t in texts)
    )
    # the CLI loads tiny:0 itself: same hidden states (only the LM head's bias differs)
    rc = main(
        ["score", "--head", str(head_dir), "--model", MODEL, "--input", str(inp), "--out", str(out)]
    )
    assert rc == 0
    cli = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    np.testing.assert_allclose(cli, scores, rtol=1e-4, atol=1e-4)


def test_chat_n_best_of_and_logprobs(server, lm, head_dir):
    c = server.client()
    msgs = [{"role": "user", "content": "say a number"}]
    r = c.chat.completions.create(
        model=MODEL,
        messages=msgs,
        n=2,
        max_tokens=6,
        logprobs=True,
        top_logprobs=3,
        seed=7,
        extra_body={"best_of": 4},
    )
    assert len(r.choices) == 2
    s = [ch.model_extra["hsrm"]["score"] for ch in r.choices]
    assert s[0] >= s[1]
    assert [ch.model_extra["hsrm"]["rank"] for ch in r.choices] == [1, 2]
    for ch in r.choices:
        assert ch.message.role == "assistant"
        toks = ch.logprobs.content
        assert "".join(t.token for t in toks) == ch.message.content
        assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in toks)
    expect = Scorer(lm, head_dir).score_completions(msgs, [ch.message.content for ch in r.choices])
    np.testing.assert_allclose(s, expect, rtol=1e-4, atol=1e-4)
    via_api = _http.post(
        f"{server.url}/v1/score",
        json={"messages": msgs, "completions": [ch.message.content for ch in r.choices]},
    ).json()["scores"]
    np.testing.assert_allclose(via_api, expect, rtol=1e-6, atol=1e-6)


def test_completion_logprobs_stop_and_prompt_batch(server):
    c = server.client()
    r = c.completions.create(
        model=MODEL, prompt=["A:", "B:"], n=1, best_of=3, max_tokens=10, logprobs=2, seed=1
    )
    assert len(r.choices) == 2 and [ch.index for ch in r.choices] == [0, 1]
    for ch in r.choices:
        lp = ch.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
        assert all(len(t) <= 2 for t in lp.top_logprobs)
        assert "".join(lp.tokens) == ch.text
    # a stop string is cut off, with everything after it
    r = c.completions.create(
        model=MODEL, prompt="A:", best_of=4, n=4, max_tokens=20, seed=2, stop=["1", "a"]
    )
    for ch in r.choices:
        assert "1" not in ch.text and "a" not in ch.text
        assert ch.finish_reason in ("stop", "length")


def test_stream(server):
    c = server.client()
    with pytest.raises(openai.BadRequestError, match="best_of"):
        c.completions.create(model=MODEL, prompt="A:", n=1, best_of=3, stream=True)
    chunks = list(
        c.completions.create(model=MODEL, prompt="A:", n=2, best_of=2, stream=True, seed=4)
    )
    assert sorted(ch.choices[0].index for ch in chunks) == [0, 1]
    plain = c.completions.create(model=MODEL, prompt="A:", n=2, best_of=2, seed=4)
    assert [ch.choices[0].text for ch in chunks] == [ch.text for ch in plain.choices]
    parts = list(
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=4
        )
    )
    assert len(parts) == 1 and parts[0].choices[0].delta.role == "assistant"
    # include_usage: one more chunk, no choices, with the counts the unstreamed reply gives
    parts = list(
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=4,
            n=2, seed=5, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert [len(p.choices) for p in parts] == [1, 1, 0]
    assert {p.object for p in parts} == {"chat.completion.chunk"}
    assert len({p.id for p in parts}) == 1
    whole = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        n=2,
        seed=5,
        extra_body={"best_of": 2},  # a streamed reply draws only its n
    )
    assert whole.object == "chat.completion"
    assert parts[-1].usage == whole.usage
    assert [p.choices[0].delta.content for p in parts[:2]] == [
        ch.message.content for ch in whole.choices
    ]


def test_get_reward_openrlhf_shape(server, lm, head_dir):
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    answers = ["123", "abc", "1 2 3"]
    body = {
        "query": [prompt + a + "<|im_end|>" for a in answers],
        "prompts": [prompt] * 3,
        "labels": [None] * 3,
    }
    got = _http.post(f"{server.url}/get_reward", json=body).json()
    assert set(got) >= {"rewards", "scores", "extra_logs"} and len(got["rewards"]) == 3
    expect = Scorer(lm, head_dir).score_completions(prompt, answers)
    np.testing.assert_allclose(got["rewards"], expect, rtol=1e-6, atol=1e-6)
    # padding as OpenRLHF leaves it in decoded queries does not change the reward
    padded = dict(body, query=["<|pad|><|pad|>" + q for q in body["query"]])
    np.testing.assert_allclose(
        _http.post(f"{server.url}/get_reward", json=padded).json()["rewards"], expect, rtol=1e-6
    )
    r = _http.post(f"{server.url}/get_reward", json={"query": ["x"]})
    assert r.status_code == 400 and "prompts" in r.json()["error"]["message"]
    r = _http.post(f"{server.url}/get_reward", json={"query": ["xyz"], "prompts": ["abc"]})
    assert r.status_code == 400 and "query[0]" in r.json()["error"]["message"]


# -- bad input ------------------------------------------------------------------------------------
def test_request_errors_are_openai_shaped(server):
    c = server.client()
    with pytest.raises(openai.BadRequestError, match="best_of"):
        c.completions.create(model=MODEL, prompt="A:", n=3, best_of=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.completions.create(model=MODEL, prompt="A:", max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match="best_of"):
        c.completions.create(model=MODEL, prompt="A:", n=1, best_of=1000)
    with pytest.raises(openai.BadRequestError, match="tokens"):
        c.completions.create(model=MODEL, prompt="x" * 5000)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.completions.create(model="gpt-4", prompt="A:")
    r = _http.post(
        f"{server.url}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = _http.post(f"{server.url}/v1/completions", json={"model": MODEL})
    assert r.status_code == 422 and "prompt" in r.json()["error"]["message"]
    r = _http.post(f"{server.url}/v1/chat/completions", json={"messages": []})
    assert r.status_code == 422
    r = _http.post(f"{server.url}/v1/score", json={"completions": ["a"]})
    assert r.status_code == 400


def test_api_key(lm, head_dir):
    s = Live(create_app(_cfg(head_dir, api_key="sekret"), lm, Head.load(head_dir)))
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client().completions.create(model=MODEL, prompt="A:")
        with pytest.raises(openai.AuthenticationError):
            s.client(key="wrong").models.list()
        assert s.client(key="sekret").models.list().data[0].id == MODEL
        assert _http.get(f"{s.url}/health").status_code == 200
        assert (
            _http.post(f"{s.url}/get_reward", json={"query": ["a"], "prompts": [""]}).status_code
            == 401
        )
    finally:
        s.close()


def test_models_health_metrics(server):
    m = server.client().models.list()
    assert m.data[0].id == MODEL and m.data[0].model_extra["hsrm"]["layers"] == [2]
    assert _http.get(f"{server.url}/health").json()["status"] == "ok"
    text = _http.get(f"{server.url}/metrics").text
    for name in (
        "hsrm_requests_total",
        "hsrm_request_duration_seconds_bucket",
        "hsrm_queue_depth",
        "hsrm_samples_generated_total",
        "hsrm_tokens_generated_total",
    ):
        assert name in text
    assert _metric(text, "hsrm_samples_generated_total") > 0


# -- load -----------------------------------------------------------------------------------------
def test_50_concurrent_requests_are_micro_batched(lm, head_dir):
    s = Live(create_app(_cfg(head_dir, max_queue=100, batch_wait_ms=20), lm, Head.load(head_dir)))
    try:

        async def go():
            c = openai.AsyncOpenAI(
                base_url=f"{s.url}/v1", api_key="x", max_retries=0, timeout=CLIENT_TIMEOUT
            )
            return await asyncio.gather(
                *[
                    c.completions.create(model=MODEL, prompt=f"Q{i}:", n=1, best_of=4, max_tokens=6)
                    for i in range(50)
                ]
            )

        got = asyncio.run(go())
        assert len(got) == 50 and all(len(r.choices) == 1 for r in got)
        text = _http.get(f"{s.url}/metrics").text
        assert _metric(text, 'hsrm_requests_total{endpoint="/v1/completions",status="5') == 0
        assert _metric(text, "hsrm_batch_prompts_sum") == 50
        assert _metric(text, "hsrm_samples_generated_total") == 200
        assert _metric(text, "hsrm_batch_prompts_count") < 50  # prompts were sampled together
    finally:
        s.close()


def test_queue_full_429_and_disconnect_stops_costing(lm, head_dir, monkeypatch):
    import hsrm.serve.engine as engine_mod

    # A gate in front of the sampler: while it is closed a request stays "being sampled", so the
    # queue fills and a client can leave while queued, however fast the sampler is.
    gate, entered = threading.Event(), threading.Event()
    gate.set()
    real = engine_mod.sample_prompts

    def gated(*a, **kw):
        entered.set()
        gate.wait(120)
        return real(*a, **kw)

    monkeypatch.setattr(engine_mod, "sample_prompts", gated)
    app = create_app(
        _cfg(head_dir, max_queue=1, max_batch=1, max_best_of=64, max_tokens=400),
        lm,
        Head.load(head_dir),
    )
    engine = app.state.ctx.engine
    s = Live(app)
    heavy = {
        "model": MODEL,
        "prompt": "A:",
        "n": 1,
        "best_of": 64,
        "max_tokens": 400,
        "temperature": 1,
    }
    try:

        async def go():
            async with httpx.AsyncClient(base_url=s.url, timeout=TIMEOUT) as c:
                return await asyncio.gather(
                    *[c.post("/v1/completions", json=heavy) for _ in range(8)]
                )

        rs = asyncio.run(go())
        codes = [r.status_code for r in rs]
        assert 429 in codes and 200 in codes and not any(c >= 500 for c in codes)
        r429 = next(r for r in rs if r.status_code == 429)
        assert r429.headers["retry-after"] == "1" and r429.json()["error"]["code"] == "queue_full"

        # a client that leaves while queued is never sampled
        before = _metric(_http.get(f"{s.url}/metrics").text, "hsrm_samples_generated_total")
        gate.clear()
        entered.clear()
        t = threading.Thread(
            target=lambda: _http.post(f"{s.url}/v1/completions", json=heavy, timeout=120)
        )
        t.start()
        assert entered.wait(60)  # the heavy request is being sampled (held at the gate)
        with pytest.raises(httpx.TimeoutException):  # the next one queues, and its client leaves
            _http.post(f"{s.url}/v1/completions", json=heavy, timeout=0.3)
        # the server sees the client leave by polling: wait for that, not for a guessed time,
        # before the engine may take the queued job
        for _ in range(300):
            if any(j.cancelled.is_set() for j in list(engine._q)):
                break
            time.sleep(0.1)
        gate.set()
        t.join()
        for _ in range(300):  # the engine drops the abandoned job once the heavy one is done
            text = _http.get(f"{s.url}/metrics").text
            if _metric(text, "hsrm_client_disconnects_total") >= 1:
                break
            time.sleep(0.1)
        assert _metric(text, "hsrm_samples_generated_total") - before == 64
        assert _metric(text, "hsrm_client_disconnects_total") >= 1
    finally:
        s.close()


# -- the command ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def test_cli_serve_sigterm_finishes_in_flight_request(head_dir):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hsrm", "serve", "--model", MODEL, "--head", str(head_dir),
         "--port", str(port), "--max-best-of", "64", "--max-tokens", "400", "--threads", "1",
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if _http.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        result = {}

        def heavy():
            result["r"] = _http.post(
                f"{url}/v1/completions",
                json={"model": MODEL, "prompt": "A:", "best_of": 16, "max_tokens": 200},
                timeout=120,
            )

        t = threading.Thread(target=heavy)
        t.start()
        for _ in range(200):  # wait until it is in flight (the /metrics request counts one)
            if _metric(_http.get(f"{url}/metrics").text, "hsrm_requests_in_flight") >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t.join(120)
        assert result["r"].status_code == 200 and len(result["r"].json()["choices"]) == 1
        # uvicorn re-raises the signal once it has shut down cleanly: killed by SIGTERM, not crashed
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_serve_refuses_head_of_another_model(head_dir, capsys):
    rc = main(["serve", "--model", "tiny:1", "--head", str(head_dir), "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "tiny-llama-0" in err and "tiny-llama-1" in err


def test_cli_score_errors(head_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"prompt": "a"}) + "\n"
    )
    assert main(["score", "--head", str(head_dir), "--model", MODEL, "--input", str(bad)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert main(["score", "--model", MODEL, "--input", str(bad)]) == 2
    assert "--head" in capsys.readouterr().err


def test_score_config_from_yaml_and_stdout(head_dir, tmp_path, capsys):
    inp = tmp_path / "a.jsonl"
    inp.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "completion": "12", "id": 7}) + "\n"
        + json.dumps({"prompt": "A:", "completion": ""}) + "\n"
    )  # fmt: skip
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"score:\n  head: {head_dir}\n  model: {MODEL}\n  input: {inp}\n")
    assert main(["score", "--config", str(cfg)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[0]["id"] == 7 and isinstance(rows[0]["score"], float) and len(rows) == 2


@pytest.mark.integration
def test_embedded_model_with_a_trained_head(embedded_lm, tmp_path):
    """SmolLM2-135M with a probe trained on a small store of its own answers to the demo task."""
    from hsrm.bon.train import TrainConfig, train
    from hsrm.engines import sample
    from hsrm.sampling import SampleRunConfig

    run, head_out = tmp_path / "run", tmp_path / "head"
    sample(
        SampleRunConfig(out=str(run), n_prompts=16, n=4, layers="mid", threads=1),
        lm=embedded_lm,
        progress=False,
    )
    train(TrainConfig(run=str(run), out=str(head_out), head="probe", layers="mid", test_frac=0.0))
    name = "smollm2-135m-instruct"
    s = Live(
        create_app(ServeConfig(head=str(head_out), model=name), embedded_lm, Head.load(head_out))
    )
    try:
        c = s.client()
        msgs = [{"role": "user", "content": "What is 3 + 4? Answer with a number."}]
        r = c.chat.completions.create(
            model=name, messages=msgs, n=2, max_tokens=8, seed=0, extra_body={"best_of": 4}
        )
        got = [ch.model_extra["hsrm"]["score"] for ch in r.choices]
        assert len(got) == 2 and got[0] >= got[1]
        assert r.usage.completion_tokens >= 4
        texts = [ch.message.content for ch in r.choices]
        via = _http.post(f"{s.url}/v1/score", json={"messages": msgs, "completions": texts})
        np.testing.assert_allclose(via.json()["scores"], got, rtol=1e-3, atol=1e-3)
        rw = _http.post(
            f"{s.url}/get_reward",
            json={"query": ["Q: 2+2?\nA: 4"], "prompts": ["Q: 2+2?\nA: "]},
        ).json()
        assert len(rw["rewards"]) == 1 and np.isfinite(rw["rewards"][0])
    finally:
        s.close()
