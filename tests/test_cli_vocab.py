"""The one flag vocabulary (docs/cli.md): --head-type / --head, --params, --threads, --config."""

import pytest

from hsrm.cli import build_parser, main
from hsrm.cli._params import parse_params
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


def test_train_flags(capsys):
    a = build_parser().parse_args(["train", "R", "--head-type", "probe", "--params", "C=2"])
    assert a.head_type == "probe" and a.params == ["C=2"] and a.threads is None
    # a bad --params is one message and exit 2, before any store is read
    assert main(["train", "R", "--head-type", "elhsr", "--params", "{lr: 1}"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["train", "R", "--head", "elhsr", "--params", "nope=1"]) == 2  # old alias
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


def test_deprecated_alias_moves_the_value_and_warns_once(caplog):
    from hsrm.cli._common import deprecated_alias

    p = build_parser()
    a = p.parse_args(["detect", "evaluate", "--json", "old.json"])
    with caplog.at_level("WARNING", logger="hsrm.cli"):
        deprecated_alias(a, "json", "out", "detect evaluate: --json", "--out")
    assert a.out == "old.json"
    assert [r.getMessage() for r in caplog.records] == [
        "detect evaluate: --json is deprecated; use --out"
    ]
    # the new flag wins when both are given; without the old one nothing is said
    a = p.parse_args(["prefs", "train", "--head", "probe", "--head-type", "elhsr"])
    deprecated_alias(a, "head_alias", "head_type", "prefs train: --head NAME", "--head-type NAME")
    assert a.head_type == "elhsr"
    caplog.clear()
    a = p.parse_args(["detect", "train", "--head-type", "probe"])
    deprecated_alias(a, "head_alias", "head_type", "detect train: --head NAME", "--head-type NAME")
    assert a.head_type == "probe" and not caplog.records
