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
        r = _http.post(f"{s.url}/get_reward", json={"query": ["a"], "prompts": [""]})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert _openai_error(r)["type"] == "authentication_error"
        # the scheme is case-insensitive (RFC 9110); the key is not
        for auth, code in [("bearer sekret", 200), ("BEARER  sekret", 200), ("Bearer SEKRET", 401),
                           ("Basic sekret", 401), ("sekret", 401), ("Bearer", 401)]:  # fmt: skip
            r = _http.get(f"{s.url}/v1/models", headers={"authorization": auth})
            assert r.status_code == code, auth
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
    train(
        TrainConfig(run=str(run), out=str(head_out), head_type="probe", layers="mid", test_frac=0.0)
    )
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


# -- a server that never answers 500 (issue 33) ----------------------------------------------------
def _openai_error(r: httpx.Response) -> dict:
    """The body of an error answer, checked to be OpenAI's shape."""
    assert r.headers["content-type"].startswith("application/json"), r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def _local_port(r: httpx.Response) -> int:
    """The client-side port of the connection that carried ``r`` (same port: same connection)."""
    return r.extensions["network_stream"].get_extra_info("client_addr")[1]


LONE = '"\\ud800 hi"'  # JSON for a string holding a lone surrogate, which no tokenizer can encode


def test_lone_surrogate_is_400_and_the_connection_lives(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        ports = set()
        for path, body in [
            ("/v1/completions", f'{{"prompt": {LONE}}}'),
            ("/v1/completions", f'{{"prompt": ["ok", {LONE}]}}'),
            ("/v1/completions", f'{{"prompt": "A:", "stop": [{LONE}]}}'),
            ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": {LONE}}}]}}'),
            ("/v1/chat/completions",
             f'{{"messages": [{{"role": "user", "content": [{{"type": "text", "text": {LONE}}}]}}]}}'),
            ("/v1/score", f'{{"prompt": {LONE}, "completions": ["a"]}}'),
            ("/v1/score", f'{{"prompt": "a", "completions": [{LONE}]}}'),
            ("/get_reward", f'{{"query": [{LONE}], "prompts": [""]}}'),
        ]:  # fmt: skip
            r = c.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (path, body, r.text)
            assert "surrogate" in _openai_error(r)["message"]
            ports.add(_local_port(r))
            ok = c.post("/v1/score", json={"prompt": "A:", "completions": ["1"]})
            assert ok.status_code == 200
            ports.add(_local_port(ok))
        assert len(ports) == 1  # one keep-alive connection carried every request


def test_parse_errors_404_405_are_openai_shaped(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        js = {"content-type": "application/json"}
        for body in (
            b'{"prompt": "\xff\xfe"}',
            b"[" * 50_000 + b"]" * 50_000,
            b'{"n": 1' + b"0" * 5000 + b"}",
        ):
            r = c.post("/v1/completions", content=body, headers=js)
            assert r.status_code == 400 and "parsed" in _openai_error(r)["message"]
        r = c.get("/v1/nope")
        assert r.status_code == 404 and "/v1/nope" in _openai_error(r)["message"]
        r = c.get("/v1/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        _openai_error(r)
        r = c.post("/v1/completions", content=b'{"prompt": "A:"}')  # no Content-Type
        assert r.status_code == 422 and "JSON object" in _openai_error(r)["message"]
        assert c.get("/health").status_code == 200


def test_request_byte_limit_is_413_before_parsing(server):
    # 10 MB: refused from its Content-Length, before a byte of it is read or tokenised
    r = _http.post(f"{server.url}/v1/completions", json={"prompt": "x" * 10_000_000})
    assert r.status_code == 413 and "--max-request-bytes" in _openai_error(r)["message"]

    def chunks():  # a chunked body declares no length: counted while it is read
        for _ in range(5):
            yield b"x" * 1_000_000

    r = _http.post(
        f"{server.url}/v1/score", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    _openai_error(r)


def test_score_and_get_reward_honour_token_limits(lm, head_dir):
    s = Live(
        create_app(
            _cfg(head_dir, max_prompt_tokens=20, max_score_tokens=6), lm, Head.load(head_dir)
        )
    )
    try:
        url = s.url
        r = _http.post(f"{url}/v1/score", json={"prompt": "1 " * 30, "completions": ["1"]})
        assert r.status_code == 400 and "--max-prompt-tokens" in _openai_error(r)["message"]
        r = _http.post(
            f"{url}/v1/score", json={"prompt": "A:", "completions": ["1", "1 2 3 4 5 6"]}
        )
        err = _openai_error(r)
        assert (
            r.status_code == 400
            and "--max-score-tokens" in err["message"]
            and "completions[1]" in err["message"]
        )
        r = _http.post(f"{url}/get_reward", json={"query": ["A:1 2 3 4 5"], "prompts": ["A:"]})
        assert r.status_code == 400 and "--max-score-tokens" in _openai_error(r)["message"]
        r = _http.post(
            f"{url}/get_reward", json={"query": ["1 " * 30 + "x"], "prompts": ["1 " * 30]}
        )
        assert r.status_code == 400 and "--max-prompt-tokens" in _openai_error(r)["message"]
        # at the limits, scored
        r = _http.post(f"{url}/v1/score", json={"prompt": "A:", "completions": ["1 2 3"]})
        assert r.status_code == 200 and len(r.json()["scores"]) == 1
    finally:
        s.close()


def test_health_answers_while_a_request_is_tokenised(lm, head_dir, monkeypatch):
    """Tokenisation runs off the event loop: /health answers while a request is held inside it
    (on the loop, the held tokenisation would block /health until it was released)."""
    import hsrm.serve.app as app_mod

    held, release = threading.Event(), threading.Event()
    real = app_mod._encode

    def slow_encode(tok, text):
        if text.startswith("HOLD"):
            held.set()
            release.wait(120)
        return real(tok, text)

    monkeypatch.setattr(app_mod, "_encode", slow_encode)
    s = Live(create_app(_cfg(head_dir), lm, Head.load(head_dir)))
    order: list[str] = []
    try:

        def long_request():
            r = _http.post(f"{s.url}/v1/score", json={"prompt": "HOLD A:", "completions": ["1"]})
            order.append(f"score {r.status_code}")

        t = threading.Thread(target=long_request)
        t.start()
        assert held.wait(60)
        for path in ("/health", "/metrics"):
            r = _http.get(f"{s.url}{path}", timeout=60)
            order.append(f"{path} {r.status_code}")
        release.set()
        t.join(120)
        assert order == ["/health 200", "/metrics 200", "score 200"]
    finally:
        release.set()
        s.close()


def test_stop_string_finish_reason_and_score(server):
    """A stop string ends the text before it; the choice says "stop", and its score is what
    /v1/score gives the returned text."""
    req = {"prompt": "A:", "n": 4, "best_of": 4, "max_tokens": 20, "seed": 2}
    plain = _http.post(f"{server.url}/v1/completions", json=req).json()["choices"]
    cut = _http.post(f"{server.url}/v1/completions", json=dict(req, stop=["1"])).json()["choices"]
    # the same seed draws the same tokens up to the stop string
    expect = [ch["text"].split("1")[0] for ch in plain if "1" in ch["text"]]
    assert expect
    by_text = {ch["text"]: ch for ch in cut}
    assert all(by_text[t]["finish_reason"] == "stop" for t in expect)
    assert all("1" not in ch["text"] for ch in cut)
    got = _http.post(
        f"{server.url}/v1/score", json={"prompt": "A:", "completions": [ch["text"] for ch in cut]}
    ).json()["scores"]
    np.testing.assert_allclose(got, [ch["hsrm"]["score"] for ch in cut], rtol=1e-4, atol=1e-4)


# -- fuzz ------------------------------------------------------------------------------------------
FUZZ_KEY = "fuzzkey"
_GOOD = {
    "/v1/completions": {"model": MODEL, "prompt": "A:", "max_tokens": 2, "n": 1, "best_of": 2},
    "/v1/chat/completions": {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
    },
    "/v1/score": {"prompt": "A:", "completions": ["1", "a"]},
    "/get_reward": {"query": ["A:1"], "prompts": ["A:"]},
}  # fmt: skip


def _fuzz_value(rng, depth: int = 0):
    """A JSON value of any type, often the wrong one, often at or past a limit."""
    kinds = ["int", "big", "float", "str", "bad", "bool", "null", "list", "dict", "deep"]
    k = rng.choice(kinds if depth < 2 else kinds[:7])
    if k == "int":
        return rng.choice([-1, 0, 1, 2, 3, 5, 21, 64, 65, 10**6, -(10**9)])
    if k == "big":
        return 10 ** rng.randint(18, 400)
    if k == "float":
        return rng.choice([0.0, -0.5, 0.5, 1.5, 2.5, 1e308, -1e-308, 3.7])
    if k == "str":
        return rng.choice(["", "A:", "x" * rng.randint(1, 3000), "é中🙂", "\x00\x01", "<|im_end|>"])
    if k == "bad":
        return "\ud800" + rng.choice(["", "x", "\udc00"])  # lone surrogates
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "list":
        return [_fuzz_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if k == "dict":
        keys = ["role", "content", "text", "type", "include_usage", "x"]
        return {rng.choice(keys): _fuzz_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    v: object = "x"
    for _ in range(rng.randint(10, 800)):  # nested as deep as JSON parsers allow, or nearly
        v = [v] if rng.random() < 0.5 else {"a": v}
    return v


def _fuzz_body(rng, path: str) -> bytes:
    """A body for ``path``: a good request with fields dropped or replaced, or broken bytes."""
    roll = rng.random()
    if roll < 0.12:  # not JSON, not UTF-8, truncated, or too deep for the parser
        return rng.choice([
            b"", b"{", b'{"prompt": "A:"', b"\xff\xfe\x00", b'{"prompt": "\xc3\x28"}', b"null",
            b"[" * 50_000 + b"]" * 50_000, b'{"n": 1' + b"0" * 5000 + b"}", b"NaN",
            bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))),
        ])  # fmt: skip
    if roll < 0.18:  # over the byte limit
        return json.dumps({"prompt": "x" * 70_000}).encode()
    body: object = json.loads(json.dumps(_GOOD.get(path, _GOOD["/v1/completions"])))
    if roll < 0.22:
        body = _fuzz_value(rng)  # not an object at all
    elif isinstance(body, dict):
        fields = [*body, "n", "best_of", "max_tokens", "temperature", "top_p", "stop", "seed",
                  "logprobs", "top_logprobs", "stream", "stream_options", "echo", "messages",
                  "prompt", "completions", "query", "prompts", "max_completion_tokens", "model"]  # fmt: skip
        for _ in range(rng.randint(1, 3)):
            f = rng.choice(fields)
            if rng.random() < 0.2:
                body.pop(f, None)
            else:
                body[f] = _fuzz_value(rng)
    text = json.dumps(body, allow_nan=True)
    if rng.random() < 0.1:  # JSON's non-standard constants, which Python's parser reads
        text = text.replace("0.5", rng.choice(["NaN", "Infinity", "-Infinity"]))
    return text.encode("utf-8", "surrogatepass")


def _fuzz_cases(n: int, seed: int = 0):
    rng = __import__("random").Random(seed)
    paths = [*_GOOD, "/v1/models", "/health", "/metrics", "/", "/v1", "/v1/completions/",
             "/v1/embeddings", "/%ff%fe", "/v1/%00", "/" + "a" * 2000, "/../etc/passwd",
             "/v1//score", "/docs/../health"]  # fmt: skip
    for _ in range(n):
        path = rng.choice(list(_GOOD) if rng.random() < 0.75 else paths)
        method = "POST" if path in _GOOD and rng.random() < 0.8 else rng.choice(
            ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])  # fmt: skip
        headers: dict[str, str | bytes] = {"authorization": rng.choice([f"Bearer {FUZZ_KEY}", f"bearer {FUZZ_KEY}",
                   f"BEARER {FUZZ_KEY}"])}  # fmt: skip
        r = rng.random()
        if r < 0.08:
            headers["authorization"] = rng.choice(
                ["", "Bearer", "Bearer wrong", "Basic abc", f"Bearer {FUZZ_KEY}x", b"Bearer \xff"]
            )
        ct = rng.choice(["application/json"] * 6 + ["", "text/plain", "application/x+json",
                        "application/json; charset=latin-1", "multipart/form-data", ";;="])  # fmt: skip
        if ct:
            headers["content-type"] = ct
        body = _fuzz_body(rng, path) if method in ("POST", "PUT", "PATCH") else b""
        yield method, path, headers, body


def test_fuzz_never_5xx_always_openai_shaped_one_connection(lm, head_dir):
    """Hundreds of malformed requests (seeded), all on one keep-alive connection: none answers 5xx,
    every refusal has OpenAI's shape, and the connection carries the next request."""
    cfg = _cfg(head_dir, api_key=FUZZ_KEY, best_of=2, max_best_of=4, default_max_tokens=2,
               max_tokens=4, max_prompt_tokens=64, max_score_tokens=16, max_prompts=4,
               max_score_items=8, max_request_bytes=64 * 1024)  # fmt: skip
    s = Live(create_app(cfg, lm, Head.load(head_dir)))
    statuses: dict[int, int] = {}
    try:
        with httpx.Client(base_url=s.url, timeout=TIMEOUT) as c:
            port = None
            for i, (method, path, headers, body) in enumerate(_fuzz_cases(400)):
                case = f"case {i}: {method} {path} {headers} {body[:120]!r}"
                r = c.request(method, path, headers=headers, content=body)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                assert r.status_code < 500, f"{case} -> {r.status_code} {r.text[:300]}"
                if r.status_code >= 400:
                    _openai_error(r)
                port = port or _local_port(r)
                assert _local_port(r) == port, f"{case} closed the connection"
            assert c.get("/health").status_code == 200 and _local_port(r) == port
        text = _http.get(f"{s.url}/metrics").text
        assert _metric(text, 'status="5') == 0
    finally:
        s.close()
    # the table reached every kind of answer: accepted, refused for each reason
    assert {200, 400, 401, 404, 405, 413, 422} <= set(statuses), statuses


def test_an_unexpected_error_is_a_500_in_openai_shape_and_the_connection_lives(lm, head_dir):
    """The last resort: a bug is answered (500, OpenAI's shape, no traceback in the body) and the
    keep-alive connection carries the next request."""
    app = create_app(_cfg(head_dir), lm, Head.load(head_dir))

    def boom(*a, **kw):
        raise RuntimeError("a bug with a secret path /home/x")

    app.state.ctx.scorer.score_pairs = boom
    s = Live(app)
    try:
        with httpx.Client(base_url=s.url, timeout=TIMEOUT) as c:
            r = c.post("/v1/score", json={"prompt": "A:", "completions": ["1"]})
            err = _openai_error(r)
            assert r.status_code == 500 and err["type"] == "server_error"
            assert "RuntimeError" in err["message"] and "/home/x" not in r.text
            ok = c.post("/v1/completions", json={"prompt": "A:", "max_tokens": 2})
            assert ok.status_code == 200 and _local_port(ok) == _local_port(r)
            text = c.get("/metrics").text
            assert _metric(text, 'hsrm_requests_total{endpoint="/v1/score",status="500"}') == 1
    finally:
        s.close()
