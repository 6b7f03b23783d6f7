import logging

import pytest
import torch

from hsrm.errors import HsrmError
from hsrm.models import ModelFingerprint
from hsrm.subspace import (
    UnembeddingSVD,
    cache_path,
    cached_svd,
    coordinate_basis,
    random_basis,
    resolve_size,
    svd_of,
    unembedding_svd,
)

FP = ModelFingerprint("toy", "rev0", 2, 16, 64)


def _W(seed=0):
    return torch.randn(64, 16, generator=torch.Generator().manual_seed(seed))


def test_svd_reconstructs_and_orders():
    W = _W()
    svd = svd_of(W, FP)
    S, V = svd.singular_values, svd.V
    assert (S[:-1] >= S[1:]).all()
    torch.testing.assert_close(V.T @ V, torch.eye(16), atol=1e-5, rtol=0)
    # ||W v_j|| = s_j for every right singular vector
    torch.testing.assert_close((W @ V).norm(dim=0), S, atol=1e-4, rtol=1e-4)


def test_reasoning_and_semantic_bases_are_complementary():
    svd = svd_of(_W(), FP)
    R = svd.reasoning_basis(4)  # smallest 4
    Sm = svd.semantic_basis(12)  # largest 12
    assert R.shape == (16, 4) and Sm.shape == (16, 12)
    torch.testing.assert_close(Sm.T @ R, torch.zeros(12, 4), atol=1e-5, rtol=0)
    P = R @ R.T + Sm @ Sm.T
    torch.testing.assert_close(P, torch.eye(16), atol=1e-5, rtol=0)
    # the reasoning directions are the ones W moves least
    W = _W()
    assert (W @ R).norm(dim=0).max() < (W @ Sm).norm(dim=0).min()
    # default semantic = complement of the default reasoning size
    assert svd.semantic_basis().shape[1] + svd.reasoning_basis().shape[1] == 16


def test_resolve_size():
    assert resolve_size(0.05, 576) == 29
    assert resolve_size(0.25, 16) == 4
    assert resolve_size(0.01, 16) == 1  # never empty
    assert resolve_size(256, 4096) == 256
    assert resolve_size(8.0, 16) == 8
    for bad in (0, 17, -0.5, 1.5, True, "x"):
        with pytest.raises(HsrmError):
            resolve_size(bad, 16)


def test_cache_miss_then_hit(tiny_lm, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HSRM_CACHE", str(tmp_path))
    fp = tiny_lm.fingerprint
    assert cached_svd(fp) is None
    with caplog.at_level(logging.INFO, logger="hsrm.subspace"):
        a = unembedding_svd(tiny_lm)
    assert cache_path(fp).exists() and str(tmp_path) in str(cache_path(fp))
    assert "cache hit" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hsrm.subspace"):
        b = unembedding_svd(tiny_lm)
    assert "SVD cache hit" in caplog.text
    torch.testing.assert_close(a.V, b.V)
    assert b.fingerprint == fp
    # the SVD is that of the model's own unembedding
    W = tiny_lm.unembedding()
    torch.testing.assert_close((W @ b.V).norm(dim=0), b.singular_values, atol=1e-3, rtol=1e-3)


def test_no_cache_writes_nothing(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("HSRM_CACHE", str(tmp_path))
    unembedding_svd(tiny_lm, use_cache=False)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_cache_of_another_model_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("HSRM_CACHE", str(tmp_path))
    svd = svd_of(_W(), FP)
    other = ModelFingerprint("toy", "rev1", 2, 16, 64)
    # a file written for FP but found at other's path (e.g. a renamed file) is refused
    cache_path(other).parent.mkdir(parents=True)
    svd.save(cache_path(other))
    assert cached_svd(other) is None
    assert cached_svd(FP) is None  # never computed for FP


def test_save_load_roundtrip_and_bad_files(tmp_path):
    svd = svd_of(_W(), FP)
    p = svd.save(tmp_path / "s.safetensors")
    back = UnembeddingSVD.load(p)
    torch.testing.assert_close(back.V, svd.V)
    assert back.fingerprint == FP
    with pytest.raises(HsrmError, match="not found"):
        UnembeddingSVD.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(HsrmError, match="not an hsrm unembedding SVD"):
        UnembeddingSVD.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HsrmError, match="cannot read"):
        UnembeddingSVD.load(tmp_path / "junk.safetensors")


def test_random_and_coordinate_bases():
    R = random_basis(16, 5, seed=3)
    torch.testing.assert_close(R.T @ R, torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(R, random_basis(16, 5, seed=3))
    assert not torch.allclose(R, random_basis(16, 5, seed=4))
    C = coordinate_basis(16, 5, seed=0)
    assert C.sum() == 5 and (C.sum(0) == 1).all() and (C.sum(1) <= 1).all()
