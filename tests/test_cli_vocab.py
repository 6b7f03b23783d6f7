"""The one flag vocabulary (docs/cli.md): --head-type / --head, --params, --threads, --config."""

import pytest

from hsrm.cli import build_parser, main
from hsrm.cli._params import check_params, parse_params
from hsrm.errors import HsrmError


def test_parse_params_json_key_value_and_mapping():
    assert parse_params('{"lr": 0.001, "layers": [1, 2]}') == {"lr": 0.001, "layers": [1, 2]}
    assert parse_params(["lr=1e-3", "pool=mean", "val-frac=0"]) == {
        "lr": 1e-3,
        "pool": "mean",
        "val_frac": 0,
    }
    assert parse_params({"max-epochs": 3}) == {"max_epochs": 3}
    assert parse_params(None) == {}
    with pytest.raises(HsrmError, match="not valid JSON"):
        parse_params("{lr: 1}")
    with pytest.raises(HsrmError, match="JSON object"):
        parse_params("[1]")
    with pytest.raises(HsrmError, match="key=value"):
        parse_params(["lr"])
    assert check_params("elhsr", {"lr": 1.0}) == {"lr": 1.0}
    with pytest.raises(HsrmError, match=r"no parameter\(s\) \['lrr'\]"):
        check_params("elhsr", {"lrr": 1.0})


def test_train_flags(capsys):
    a = build_parser().parse_args(["train", "R", "--head-type", "probe", "--params", "C=2"])
    assert a.head == "probe" and a.params == ["C=2"] and a.threads is None
    # a bad --params is one message and exit 2, before any store is read
    assert main(["train", "R", "--head-type", "elhsr", "--params", "{lr: 1}"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["train", "R", "--head-type", "elhsr", "--params", "nope=1"]) == 2
    assert "has no parameter(s) ['nope']" in capsys.readouterr().err


def test_train_config_accepts_head_type(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  run: R\n  head_type: elhsr\n  params: {lrr: 1}\n")
    assert main(["train", "--config", str(cfg)]) == 2  # reaches the parameter check
    assert "head 'elhsr' has no parameter(s) ['lrr']" in capsys.readouterr().err


def test_train_and_evaluate_need_a_run(capsys):
    assert main(["train", "--head-type", "elhsr"]) == 2
    assert "name the sample store" in capsys.readouterr().err
    assert main(["evaluate", "--head", "H"]) == 2
    assert "name the sample store" in capsys.readouterr().err
    assert main(["evaluate", "R"]) == 2
    assert "--head HEAD/" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["train"],
        ["evaluate"],
        ["detect", "capture"],
        ["detect", "train"],
        ["detect", "evaluate"],
        ["detect", "score"],
        ["prefs", "train"],
        ["prefs", "evaluate"],
        ["prefs", "build"],
        ["sae", "train"],
        ["sae", "inspect"],
    ],
)
def test_model_and_head_commands_take_config_and_threads(argv):
    a = build_parser().parse_args([*argv, "--config", "c.yaml", "--threads", "1"])
    assert a.config == "c.yaml" and a.threads == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["detect", "evaluate", "--json", "old.json"],
        ["detect", "capture", "--samples", "2"],
        ["detect", "score", "--samples", "2"],
        ["prefs", "build", "--k", "2"],
    ],
)
def test_old_flag_names_are_gone(argv, capsys):
    """No release was published with them, so the hidden old spellings were dropped."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "unrecognized arguments" in capsys.readouterr().err
