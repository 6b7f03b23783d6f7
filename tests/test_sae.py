import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hsrm.capture import prenorm_index
from hsrm.errors import HsrmError
from hsrm.sae import (
    SAE,
    collect_activations,
    hidden_index_to_hook,
    hook_metadata,
    hook_to_hidden_index,
    sae_stats,
    top_activating_tokens,
    train_topk_sae,
)


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
        acts,
        d_sae=64,
        k=4,
        steps=150,
        batch_size=256,
        lr=3e-3,
        meta=hook_metadata(2, n_layers=4, model_name="tiny"),
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
    meta = cfg["metadata"]  # SAELens 6's key; hsrm's earlier "meta" is gone
    assert "meta" not in cfg and cfg["normalize_activations"] == "none"
    assert meta["hook_name"] == "blocks.2.hook_resid_pre" and meta["model_name"] == "tiny"
    assert (
        meta["sae_lens_version"].startswith("6.") and cfg["rescale_acts_by_decoder_norm"] is False
    )
    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in w.items()} == {
        "W_enc": (16, 64),
        "b_enc": (64,),
        "W_dec": (64, 16),
        "b_dec": (16,),
    }
    again = SAE.load(tmp_path / "sae")
    assert again.hidden_state_index(4) == 2
    torch.testing.assert_close(again.encode(acts[:50]), sae.encode(acts[:50]))


def _write(path, cfg, tensors):
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))


def test_hook_names_map_to_hidden_state_indices():
    n = 4  # blocks 0..3; hidden states 0..4 (4 = after the final norm), 5 = prenorm
    assert prenorm_index(n) == 5
    cases = {
        "blocks.0.hook_resid_pre": 0,
        "blocks.3.hook_resid_pre": 3,
        "blocks.0.hook_resid_post": 1,
        "blocks.2.hook_resid_post": 3,
        "blocks.3.hook_resid_post": 5,  # the last block's output is the PRE-norm state
        "model.layers.3": 5,
        "model.layers.1": 2,
        "hidden_states.4": 4,
    }
    for hook, idx in cases.items():
        assert hook_to_hidden_index(hook, n) == idx, hook
    for idx in range(prenorm_index(n) + 1):  # writing then reading a hook is the identity
        assert hook_to_hidden_index(hidden_index_to_hook(idx, n), n) == idx
    for bad in (
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_mlp_out",
        "blocks.1.attn.hook_z",
        "ln_final.hook_normalized",
        "blocks.4.hook_resid_pre",
        "hidden_states.9",
    ):
        with pytest.raises(HsrmError, match="SAE hook"):
            hook_to_hidden_index(bad, n)


def test_loads_older_saelens_and_jumprelu(tmp_path):
    d, m = 8, 12
    t = {
        "W_enc": torch.randn(d, m),
        "b_enc": torch.zeros(m),
        "W_dec": torch.randn(m, d),
        "b_dec": torch.zeros(d),
    }
    # SAELens < 6: hook_point / hook_point_layer (a block index) at the top level
    _write(
        tmp_path / "std",
        {
            "d_in": d,
            "d_sae": m,
            "activation_fn_str": "relu",
            "hook_point": "blocks.3.hook_resid_pre",
            "hook_point_layer": 3,
            "model_name": "gpt2",
        },
        t,
    )
    std = SAE.load(tmp_path / "std")
    assert std.architecture == "standard" and std.hidden_state_index(6) == 3
    assert std.meta["model_name"] == "gpt2"
    x = torch.randn(5, d)
    torch.testing.assert_close(std.encode(x), (x @ t["W_enc"]).relu())
    # SAELens 5: topk as an activation function with its k in activation_fn_kwargs
    _write(
        tmp_path / "k5",
        {
            "d_in": d,
            "d_sae": m,
            "architecture": "standard",
            "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 3},
            "hook_name": "blocks.1.hook_resid_post",
            "hook_layer": 1,
        },
        t,
    )
    k5 = SAE.load(tmp_path / "k5")
    assert k5.architecture == "topk" and k5.k == 3 and k5.hidden_state_index(6) == 2
    assert int((k5.encode(x) > 0).sum(1).max()) <= 3
    # SAELens < 6: d_sae from the expansion factor; a finetuning scaling_factor on the latents
    s = torch.linspace(0.5, 2.0, m)
    _write(
        tmp_path / "sf2",
        {"d_in": d, "d_sae": None, "expansion_factor": 1, "hook_point": "blocks.0.hook_resid_pre"},
        {
            k_: (v[..., :d] if k_ in ("W_enc", "b_enc") else v[:d]).contiguous()
            for k_, v in t.items()
        }
        | {"scaling_factor": s[:d]},
    )
    sf = SAE.load(tmp_path / "sf2")
    assert sf.d_sae == d and sf.hidden_state_index(6) == 0
    f = sf.encode(x)
    torch.testing.assert_close(sf.decode(f), (f * s[:d]) @ t["W_dec"][:d] + t["b_dec"])
    # SAELens 6 JumpReLU; an older checkpoint's log_threshold
    thr = torch.full((m,), 0.5)
    for name, extra in (("jr", {"threshold": thr}), ("jrlog", {"log_threshold": thr.log()})):
        _write(
            tmp_path / name,
            {
                "d_in": d,
                "d_sae": m,
                "architecture": "jumprelu",
                "metadata": {"hook_name": "blocks.3.hook_resid_post", "sae_lens_version": "6.5.0"},
            },
            {**t, **extra},
        )
        jr = SAE.load(tmp_path / name)
        assert jr.hidden_state_index(6) == 4  # resid_post of block 3 is hidden-state index 4
        assert jr.hidden_state_index(4) == prenorm_index(4)  # ...unless block 3 is the last
        pre = x @ t["W_enc"]
        torch.testing.assert_close(jr.encode(x), pre * (pre > 0.5))


def test_normalisation_flags_honoured(tmp_path):
    d, m = 8, 12
    g = torch.Generator().manual_seed(0)
    t = {
        "W_enc": torch.randn(d, m, generator=g),
        "b_enc": torch.randn(m, generator=g),
        "W_dec": torch.randn(m, d, generator=g) * 3,
        "b_dec": torch.randn(d, generator=g),
    }
    x = torch.randn(6, d, generator=g) * 5
    base = {"d_in": d, "d_sae": m, "architecture": "topk", "k": 3}
    # rescale_acts_by_decoder_norm: top-k chosen on pre * ||W_dec_j||, folded exactly on load
    _write(tmp_path / "rs", {**base, "rescale_acts_by_decoder_norm": True}, t)
    rs = SAE.load(tmp_path / "rs")
    norms = t["W_dec"].norm(dim=-1)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norms
    top = pre.topk(3, dim=-1)
    want = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
    torch.testing.assert_close(rs.encode(x), want)
    torch.testing.assert_close(rs.W_dec.norm(dim=-1), torch.ones(m))
    torch.testing.assert_close(
        rs(x), (want / norms) @ t["W_dec"] + t["b_dec"], rtol=1e-4, atol=1e-4
    )
    # per-token input normalisations: the latents do not depend on the token's scale
    for norm in ("constant_norm_rescale", "layer_norm"):
        _write(tmp_path / norm, {**base, "normalize_activations": norm}, t)
        sn = SAE.load(tmp_path / norm)
        torch.testing.assert_close(sn.encode(3 * x), sn.encode(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sn(3 * x), 3 * sn(x), rtol=1e-4, atol=1e-4)
        with pytest.raises(HsrmError, match="needs the input"):
            sn.decode(sn.encode(x))
    for norm, hint in (
        ("expected_average_only_in", "fold_activation_norm_scaling_factor"),
        ("covariance_whitening", "fold_activation_whitening"),
    ):
        _write(tmp_path / norm, {**base, "normalize_activations": norm}, t)
        with pytest.raises(HsrmError, match=hint):
            SAE.load(tmp_path / norm)


def test_unknown_hook_is_refused_not_guessed(tmp_path):
    from tests.conftest import make_features

    X, y, g = make_features(n_prompts=20, seed=1)
    from hsrm.heads import make_head

    d = X.hidden_size
    SAE(d, 16).save(tmp_path / "nohook")
    assert SAE.load(tmp_path / "nohook").hidden_state_index(X.fingerprint.n_layers) is None
    with pytest.raises(HsrmError, match="names no hook"):
        make_head("sparserm", sae=str(tmp_path / "nohook"), k=4, epochs=1).fit(X, y, g)
    SAE(d, 16, meta={"hook_name": "blocks.0.hook_mlp_out"}).save(tmp_path / "mlp")
    with pytest.raises(HsrmError, match="hook_mlp_out"):
        make_head("sparserm", sae=str(tmp_path / "mlp"), k=4, epochs=1).fit(X, y, g)


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
    _write(
        tmp_path / "hookz",
        {"d_in": d, "d_sae": m, "architecture": "topk", "reshape_activations": "hook_z"},
        t,
    )
    with pytest.raises(HsrmError, match="reshape_activations"):
        SAE.load(tmp_path / "hookz")
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
    meta = hook_metadata(1, tiny_lm.fingerprint.n_layers)
    sae, _ = train_topk_sae(acts, d_sae=16, k=2, steps=20, batch_size=32, meta=meta)
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
    # the prenorm pseudo-layer (TransformerLens's last hook_resid_post) is collected too
    n = tiny_lm.fingerprint.n_layers
    pre = collect_activations(tiny_lm, texts, layer=prenorm_index(n))
    post = collect_activations(tiny_lm, texts, layer=n)
    assert pre.shape == post.shape and not torch.allclose(pre, post)
    norm = tiny_lm.model.get_decoder().norm
    with torch.no_grad():
        torch.testing.assert_close(norm(pre), post, rtol=1e-4, atol=1e-5)


# -- the real SAELens package (extra "sae", installed by `make install`) ------------------------
@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens", reason="sae-lens not installed (pip install hsrm[sae])")


def _random_saelens(sl, arch, d, m, **kw):
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name="blocks.1.hook_resid_post", model_name="tiny-llama")
    cls, cfg_cls = {
        "topk": (sl.TopKSAE, sl.TopKSAEConfig),
        "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig),
        "standard": (sl.StandardSAE, sl.StandardSAEConfig),
    }[arch]
    sae = cls(cfg_cls(d_in=d, d_sae=m, metadata=meta, **kw))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name == "threshold" else 1.0))
        if arch == "jumprelu":
            sae.threshold.abs_()
    return sae


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}),
        ("topk", {"k": 5, "normalize_activations": "constant_norm_rescale"}),
        ("jumprelu", {}),
        ("standard", {"normalize_activations": "layer_norm", "apply_b_dec_to_input": False}),
    ],
)
def test_sae_saved_by_saelens_loads_in_hsrm(sae_lens, arch, kw, tmp_path):
    d, m = 16, 48
    ref = _random_saelens(sae_lens, arch, d, m, **kw)
    ref.save_model(tmp_path / "sl")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"  # the format under test
    ours = SAE.load(tmp_path / "sl")
    assert ours.architecture == arch and ours.meta["model_name"] == "tiny-llama"
    assert ours.hidden_state_index(4) == 2 and ours.hidden_state_index(2) == prenorm_index(2)
    x = torch.randn(32, d, generator=torch.Generator().manual_seed(1)) * 4
    with torch.no_grad():
        want_f, want_x = ref.encode(x), ref.decode(ref.encode(x))
    assert int((want_f > 0).sum()) > 0
    torch.testing.assert_close(ours.encode(x), want_f, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours(x), want_x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("index", [2, 5])  # a mid layer, and prenorm (the last resid_post)
def test_sae_saved_by_hsrm_loads_in_saelens(sae_lens, trained, index, tmp_path):
    acts, sae, _ = trained
    sae.meta = hook_metadata(index, n_layers=4, model_name="tiny-llama")
    sae.save(tmp_path / "ours")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "ours")
    assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.k == 4
    assert theirs.cfg.metadata.hook_name == hidden_index_to_hook(index, 4)
    assert theirs.cfg.metadata.model_name == "tiny-llama"
    assert theirs.cfg.metadata["hsrm_hidden_state_index"] == index
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(acts[:64]), sae.encode(acts[:64]))
        torch.testing.assert_close(theirs(acts[:64]), sae(acts[:64]), rtol=1e-4, atol=1e-4)
    # ...and SAELens's own save of it comes back to hsrm with the same hook
    theirs.save_model(tmp_path / "again")
    assert SAE.load(tmp_path / "again").hidden_state_index(4) == index


def test_prefs_train_reads_the_sae_hook_layer(tiny_lm, tmp_path, monkeypatch, capsys):
    """`hsrm prefs train --sae`: the hook decides the captured layer (the last block's
    hook_resid_post is the prenorm state); an SAE with no hook stops instead of reading all."""
    from pathlib import Path

    import hsrm.models
    from hsrm.cli import main
    from hsrm.heads import Head

    monkeypatch.setattr(hsrm.models, "load_model", lambda *a, **k: tiny_lm)
    n = tiny_lm.fingerprint.n_layers
    pairs = Path(__file__).parent / "fixtures" / "prefs" / "tqa_small.csv"
    acts = collect_activations(tiny_lm, ["the cat sat on the mat", "1 2 3 4 5"], prenorm_index(n))
    sae, _ = train_topk_sae(acts, d_sae=16, k=2, steps=5, batch_size=8)
    sae.meta = {"hook_name": f"blocks.{n - 1}.hook_resid_post", "model_name": "tiny"}
    sae.save(tmp_path / "sae")
    args = ["prefs", "train", "--pairs", str(pairs), "--out", str(tmp_path / "h")]
    params = ["--params", '{"k": 2, "hidden": 0, "epochs": 2}']
    assert main([*args, "--sae", str(tmp_path / "sae"), *params]) == 0
    assert Head.load(tmp_path / "h").layers_ == (prenorm_index(n),)
    SAE(tiny_lm.fingerprint.hidden_size, 16).save(tmp_path / "nohook")
    assert main([*args, "--sae", str(tmp_path / "nohook"), *params]) == 2
    assert "names no hook" in capsys.readouterr().err
