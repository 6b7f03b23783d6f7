"""Adding a head type is one file plus its registration: ``ToyHead`` below, registered for these
tests only, goes through ``hsrm train``, ``hsrm evaluate`` and the report with no other file of
hsrm changed. What commands and reports need to know about it, it declares on its class."""

import json
from typing import Any

import numpy as np
import pytest
import torch

from hsrm.cli import main
from hsrm.errors import HsrmError
from hsrm.features import TokenFeatures
from hsrm.heads import REGISTRY, Head, make_head
from hsrm.heads.base import register, unregister
from hsrm.layer_spec import parse_layers


class ToyHead(Head):
    """Ridge regression of the label (+1 / -1) on the mean-pooled states of its layers."""

    default_layers = "top:2"  # hsrm train gives it the last two hidden states
    calibrated = True  # the report draws its reliability diagram (or says why not)
    display_order = 5  # before elhsr (10) in tables
    label = "Toy ridge"

    def __init__(self, layers: list[int] | None = None, l2: float = 1.0):
        self.layers = layers
        self.l2 = l2

    def _pooled(self, X: TokenFeatures) -> np.ndarray:
        P = X.select_layers(list(self.layers_)).pooled("mean").numpy().astype(np.float64)
        return P.reshape(len(P), -1)

    def _fit(self, X: TokenFeatures, y: np.ndarray, groups: np.ndarray | None) -> None:
        self.layers_ = tuple(self.layers) if self.layers is not None else tuple(X.layers)
        P = self._pooled(X)
        self.w_ = np.linalg.solve(P.T @ P + self.l2 * np.eye(P.shape[1]), P.T @ (2 * y - 1))

    def _score(self, X: TokenFeatures) -> np.ndarray:
        return self._pooled(X) @ self.w_

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"w": torch.as_tensor(self.w_)}, {}

    def _set_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.w_ = tensors["w"].numpy()


@pytest.fixture
def toy():
    """``toy`` registered for one test; gone after it, so the contract test over every registered
    head (tests/test_heads_contract.py) never sees it."""
    register("toy")(ToyHead)
    try:
        yield ToyHead
    finally:
        unregister("toy")
        assert "toy" not in REGISTRY


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """12 prompts x 4 answers of the random tiny model, every layer captured; labelled by answer
    text so both classes occur (as in tests/test_pipeline.py)."""
    from hsrm.tasks.synthetic import SyntheticTask

    d = tmp_path_factory.mktemp("toy") / "run"
    argv = ["sample", "--out", str(d), "--model", "tiny:0", "--n-prompts", "12", "--n", "4"]
    argv += ["--max-new-tokens", "3", "--layers", "all"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SyntheticTask, "check", lambda self, ext, p: ext is None)
        assert main(argv) == 0
    return d


def test_a_toy_head_trains_evaluates_and_reports(toy, store, tmp_path, capsys):
    head_dir, ev = tmp_path / "head", tmp_path / "eval"
    argv = ["train", str(store), "--head-type", "toy", "--out", str(head_dir)]
    assert main([*argv, "--test-frac", "0.6", "--params", "l2=0.5"]) == 0, capsys.readouterr()
    cfg = json.loads((head_dir / "config.json").read_text())
    n_layers = cfg["fingerprint"]["n_layers"]
    assert cfg["architecture"] == "toy" and cfg["params"]["l2"] == 0.5
    # its declared default layers, in the one layer vocabulary, reached its `layers` parameter
    assert cfg["params"]["layers"] == list(parse_layers("top:2", n_layers))
    assert cfg["layers"] == cfg["params"]["layers"]

    argv = ["evaluate", str(store), "--head", str(head_dir), "--out", str(ev), "--n-boot", "20"]
    assert main(argv) == 0, capsys.readouterr()
    rep = json.loads((ev / "results.json").read_text())
    assert {"toy", "toy_vote", "majority"} <= set(rep["bon"])
    md = (ev / "results.md").read_text()
    rows = [r.split("|")[1].strip() for r in md.splitlines() if r.startswith("| ")]
    assert rows[1:3] == ["toy", "toy_vote"]  # after the header: the head first, then its vote
    page = (ev / "results.html").read_text()
    assert "Toy ridge" in page  # its label names it in the plot's legend
    assert "reliability" in page  # calibrated: the diagram, or the reason it is not drawn


def test_layers_flag_overrides_the_default(toy, store, tmp_path):
    assert (
        main(
            [
                "train",
                str(store),
                "--head-type",
                "toy",
                "--layers",
                "0,1",
                "--out",
                str(tmp_path / "h"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "h" / "config.json").read_text())["params"]["layers"] == [0, 1]


def test_registry_refuses_a_second_head_under_a_taken_name(toy):
    class Other(ToyHead):
        pass

    with pytest.raises(HsrmError, match="'toy' is already registered by .*ToyHead"):
        register("toy")(Other)
    with pytest.raises(HsrmError, match="'elhsr' is already registered"):
        register("elhsr")(Other)
    assert REGISTRY["toy"] is ToyHead
    register("toy")(ToyHead)  # the same class again is not a conflict
    again = type("ToyHead", (Head,), {"__module__": ToyHead.__module__, "__qualname__": "ToyHead"})
    register("toy")(again)  # nor its module run again (importlib.reload): the new class wins
    assert REGISTRY["toy"] is again


@pytest.mark.parametrize(
    "attr, value, why",
    [
        ("default_layers", "-1", "default_layers '-1': negative layer index"),
        ("default_layers", 4, "default_layers must be a layer spec string"),
        ("calibrated", "yes", "calibrated must be True or False"),
        ("display_order", 1.5, "display_order must be an integer"),
        ("token_view", True, "token_view needs a token_contributions"),
    ],
)
def test_capabilities_are_checked_when_a_head_registers(attr, value, why):
    bad = type("BadHead", (ToyHead,), {attr: value})
    with pytest.raises(HsrmError, match=why) as e:
        register("bad_toy")(bad)
    assert "head 'bad_toy' (BadHead)" in str(e.value)
    assert "bad_toy" not in REGISTRY


def test_make_head_checks_names_and_types(toy):
    assert make_head("toy", l2=2.0).l2 == 2.0
    assert make_head(ToyHead).get_params() == {"layers": None, "l2": 1.0}
    with pytest.raises(HsrmError, match=r"head 'toy' has no parameter\(s\) \['lr'\]"):
        make_head("toy", lr=1.0)
    with pytest.raises(HsrmError, match="l2"):
        make_head("toy", l2="big")
