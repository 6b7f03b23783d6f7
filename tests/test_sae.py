import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hsrm.errors import HsrmError
from hsrm.sae import SAE, collect_activations, sae_stats, top_activating_tokens, train_topk_sae


def sparse_data(n=3000, d=16, atoms=32, active=3, seed=0):
    """Activations that are sparse combinations of unit dictionary atoms, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(atoms, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, atoms)
    idx = torch.rand(n, atoms, generator=g).argsort(1)[:, :active]
    codes.scatter_(1, idx, torch.rand(n, active, generator=g) * 2 + 1)
    return codes @ D + 0.5


@pytest.fixture(scope="module")
def trained():
    acts = sparse_data()
    return acts, *train_topk_sae(
        acts, d_sae=64, k=4, steps=150, batch_size=256, lr=3e-3, meta={"hook_layer": 2}
    )


def test_topk_sae_reconstructs_sparse_data(trained):
    acts, sae, stats = trained
    assert stats["fve"] > 0.8, stats
    assert 0.0 <= stats["dead_share"] < 0.5
    f = sae.encode(acts[:100])
    assert int((f > 0).sum(1).max()) <= 4  # TopK: at most k active
    held = sae_stats(sae, sparse_data(n=500, seed=0)[:500])
    assert held["fve"] > 0.8
    # the saved SAE reads raw activations (the training scale is folded into the weights)
    assert torch.allclose(sae.b_dec.norm(), acts.mean(0).norm(), rtol=0.5)


def test_saelens_folder_roundtrip(trained, tmp_path):
    acts, sae, _ = trained
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert (
        cfg["architecture"] == "topk" and cfg["k"] == 4 and cfg["d_in"] == 16 and cfg["d_sae"] == 64
    )
    assert cfg["meta"]["hook_layer"] == 2 and cfg["normalize_activations"] == "none"
    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in w.items()} == {
        "W_enc": (16, 64),
        "b_enc": (64,),
        "W_dec": (64, 16),
        "b_dec": (16,),
    }
    again = SAE.load(tmp_path / "sae")
    assert again.hook_layer == 2
    torch.testing.assert_close(again.encode(acts[:50]), sae.encode(acts[:50]))


def _write(path, cfg, tensors):
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))


def test_loads_older_saelens_and_jumprelu(tmp_path):
    d, m = 8, 12
    t = {
        "W_enc": torch.randn(d, m),
        "b_enc": torch.zeros(m),
        "W_dec": torch.randn(m, d),
        "b_dec": torch.zeros(d),
    }
    _write(
        tmp_path / "std",
        {
            "d_in": d,
            "d_sae": m,
            "activation_fn_str": "relu",
            "hook_name": "blocks.3.hook_resid_pre",
        },
        t,
    )
    std = SAE.load(tmp_path / "std")
    assert std.architecture == "standard" and std.hook_layer == 3
    x = torch.randn(5, d)
    torch.testing.assert_close(std.encode(x), (x @ t["W_enc"]).relu())
    thr = torch.full((m,), 0.5)
    _write(
        tmp_path / "jr",
        {
            "d_in": d,
            "d_sae": m,
            "architecture": "jumprelu",
            "meta": {"hook_name": "blocks.3.hook_resid_post"},
        },
        {**t, "threshold": thr},
    )
    jr = SAE.load(tmp_path / "jr")
    assert jr.hook_layer == 4  # resid_post of block 3 is hidden-state index 4
    pre = x @ t["W_enc"]
    torch.testing.assert_close(jr.encode(x), pre * (pre > 0.5))


def test_bad_sae_folders(tmp_path):
    d, m = 8, 12
    t = {
        "W_enc": torch.randn(d, m),
        "b_enc": torch.zeros(m),
        "W_dec": torch.randn(m, d),
        "b_dec": torch.zeros(d),
    }
    with pytest.raises(HsrmError, match="not an SAE folder"):
        SAE.load(tmp_path)
    _write(
        tmp_path / "miss",
        {"d_in": d, "d_sae": m, "architecture": "topk", "k": 2},
        {k: v for k, v in t.items() if k != "b_enc"},
    )
    with pytest.raises(HsrmError, match="missing tensor"):
        SAE.load(tmp_path / "miss")
    _write(tmp_path / "shape", {"d_in": d, "d_sae": m + 1, "architecture": "topk", "k": 2}, t)
    with pytest.raises(HsrmError, match="shape"):
        SAE.load(tmp_path / "shape")
    _write(
        tmp_path / "norm",
        {
            "d_in": d,
            "d_sae": m,
            "architecture": "topk",
            "normalize_activations": "expected_average_only_in",
        },
        t,
    )
    with pytest.raises(HsrmError, match="normalize_activations"):
        SAE.load(tmp_path / "norm")
    _write(tmp_path / "gated", {"d_in": d, "d_sae": m, "architecture": "gated"}, t)
    with pytest.raises(HsrmError, match="not supported"):
        SAE.load(tmp_path / "gated")
    with pytest.raises(HsrmError, match="k <= d_sae"):
        train_topk_sae(torch.randn(10, d), d_sae=4, k=8, steps=1)


def test_activations_and_top_tokens_on_tiny_model(tiny_lm):
    texts = ["hello world, hello there", "the cat sat on the mat", "numbers 1 2 3 4"]
    acts = collect_activations(tiny_lm, texts, layer=1)
    n_tok = sum(len(tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]) - 1 for t in texts)
    assert acts.shape == (n_tok, tiny_lm.fingerprint.hidden_size)
    sae, _ = train_topk_sae(acts, d_sae=16, k=2, steps=20, batch_size=32, meta={"hook_layer": 1})
    fired = (sae.encode(acts) > 0).sum(0)
    live = [int(j) for j in torch.argsort(fired, descending=True)[:2]]
    tops = top_activating_tokens(sae, tiny_lm, texts, live, n_top=3)
    assert set(tops) == set(live)
    for j in live:
        assert 1 <= len(tops[j]) <= 3
        acts_j = [r["activation"] for r in tops[j]]
        assert acts_j == sorted(acts_j, reverse=True) and acts_j[0] > 0
        assert all(r["token"] in texts[r["text_index"]] for r in tops[j])
    with pytest.raises(HsrmError, match="out of range"):
        collect_activations(tiny_lm, texts, layer=9)
