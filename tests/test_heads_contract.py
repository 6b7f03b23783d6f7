"""One contract, every registered head: a new head is done when it passes."""

import inspect

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hsrm.errors import HsrmError
from hsrm.heads import REGISTRY, Head, make_head
from hsrm.models import ModelFingerprint
from tests.conftest import make_features

# Small, fast settings per head; the defaults are the papers'.
FAST = {
    "elhsr": {"lr": 1e-2, "max_epochs": 10},
    "elhsr_logits": {"lr": 1e-2, "max_epochs": 10},
    "elhsr_toplogprobs": {"lr": 1e-2, "max_epochs": 10},
    "harp": {"layer": 2, "projection": "full", "lr": 1e-2, "epochs": 8, "hidden": 32},
    # SparseRM's SAE path is tested in tests/test_sparserm.py: this fixture's test set carries the
    # signal along another direction (cos 0.28), which only a linear fit on all of z transfers.
    "sparserm": {"features": "dense", "hidden": 0, "epochs": 60, "lr": 1e-2},
    "denserm": {"hidden": 0, "epochs": 60, "lr": 1e-2},
}


def _names():
    import hsrm.heads  # noqa: F401

    return sorted(REGISTRY)


@pytest.fixture(scope="module")
def data():
    X, y, g = make_features(n_prompts=60, seed=1)
    Xt, yt, gt = make_features(n_prompts=20, seed=2)
    return X, y, g, Xt, yt, gt


@pytest.mark.parametrize("name", _names())
def test_init_stores_params_only(name):
    head = make_head(name, **FAST.get(name, {}))
    learned = [k for k in vars(head) if k.endswith("_")]
    assert learned == [], f"__init__ set learned state {learned}"
    assert set(head.get_params()) == set(inspect.signature(type(head).__init__).parameters) - {
        "self"
    }


@pytest.mark.parametrize("name", _names())
def test_fit_score_learns_signal(name, data):
    X, y, g, Xt, yt, gt = data
    head = make_head(name, **FAST.get(name, {}))
    assert head.fit(X, y, g) is head
    s = head.score(Xt)
    assert s.shape == (len(Xt),)
    assert np.isfinite(s).all()
    assert roc_auc_score(yt, s) > 0.8


@pytest.mark.parametrize("name", _names())
def test_save_load_roundtrip(name, data, tmp_path):
    X, y, g, Xt, _, _ = data
    head = make_head(name, **FAST.get(name, {})).fit(X, y, g)
    head.save_pretrained(tmp_path / "h")
    # a Hugging Face Hub model folder: config + model.safetensors + a model card
    files = sorted(p.name for p in (tmp_path / "h").iterdir() if not p.name.startswith("."))
    assert files == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    cfg = (tmp_path / "h" / "config.json").read_text()
    assert '"architecture"' in cfg and '"format_version"' in cfg and '"fingerprint"' in cfg
    card = (tmp_path / "h" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: hsrm") and f"`{name}`" in card
    assert X.fingerprint.revision in card and "## Intended use and limits" in card
    loaded = Head.from_pretrained(tmp_path / "h")
    assert type(loaded) is type(head)
    np.testing.assert_allclose(loaded.score(Xt), head.score(Xt), rtol=1e-5, atol=1e-6)
    assert loaded.n_parameters() > 0
    # a folder in the layout before model.safetensors (head.safetensors, no card) still loads
    (tmp_path / "h" / "model.safetensors").rename(tmp_path / "h" / "head.safetensors")
    (tmp_path / "h" / "README.md").unlink()
    old = Head.load(tmp_path / "h")
    np.testing.assert_allclose(old.score(Xt), head.score(Xt), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", _names())
def test_refuses_other_model(name, data, tmp_path):
    X, y, g, Xt, _, _ = data
    head = make_head(name, **FAST.get(name, {})).fit(X, y, g)
    head.save(tmp_path / "h")
    other = ModelFingerprint("other-model", "zz", 4, 16, 64)
    from hsrm.features import TokenFeatures

    Xo = TokenFeatures.from_tensors([Xt[i] for i in range(4)], Xt.layers, other)
    with pytest.raises(HsrmError, match="other-model"):
        Head.load(tmp_path / "h").score(Xo)
    # ...and features that lack a layer the head reads
    Xl = TokenFeatures.from_tensors([Xt[i][:, :1] for i in range(4)], (0,), Xt.fingerprint)
    with pytest.raises(HsrmError, match="layers"):
        Head.load(tmp_path / "h").score(Xl)


@pytest.mark.parametrize("name", _names())
def test_unfitted_and_bad_labels(name, data):
    X, y, g, *_ = data
    with pytest.raises(HsrmError, match="not fitted"):
        make_head(name).score(X)
    with pytest.raises(HsrmError, match="single class"):
        make_head(name, **FAST.get(name, {})).fit(X, np.ones(len(X)), g)


def test_unknown_head_and_param():
    with pytest.raises(HsrmError, match="unknown head"):
        make_head("nope")
    with pytest.raises(HsrmError, match="no parameter"):
        make_head("elhsr", bogus=1)
