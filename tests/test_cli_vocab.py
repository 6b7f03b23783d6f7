"""The one flag vocabulary (docs/cli.md): --head-type / --head, --params, --threads, --config."""

from pathlib import Path

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


#: every command that runs a model: each takes the ModelConfig flags
MODEL_COMMANDS = [
    ["sample"],
    ["demo"],
    ["score"],
    ["serve"],
    ["detect", "capture"],
    ["detect", "score"],
    ["prefs", "train"],
    ["prefs", "evaluate"],
    ["prefs", "build"],
    ["prefs", "loop"],
    ["sae", "train"],
    ["sae", "inspect"],
    ["import"],
    ["select"],
]
MODEL_FLAGS = ("--model", "--dtype", "--device", "--threads")


def _subparser(argv):
    import argparse

    p = build_parser()
    for name in argv:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return p


@pytest.mark.parametrize("argv", MODEL_COMMANDS)
def test_model_commands_take_the_model_flags(argv):
    a = build_parser().parse_args(
        [*argv, "--model", "tiny:0", "--dtype", "bfloat16", "--device", "cpu", "--threads", "1"]
    )
    assert (a.model, a.dtype, a.device, a.threads) == ("tiny:0", "bfloat16", "cpu", 1)


def test_model_flags_mean_the_same_in_every_command():
    """Declared once (``ModelConfig``): the same help and default everywhere (detect score's
    --model alone defaults to the head's own model; import's and select's to none, the logged
    log-probs)."""
    from hsrm.models import ModelConfig

    helps = {}
    for argv in MODEL_COMMANDS:
        p = _subparser(argv)
        for flag in MODEL_FLAGS:
            if argv in (["detect", "score"], ["import"], ["select"]) and flag == "--model":
                continue
            helps.setdefault(flag, set()).add(p._option_string_actions[flag].help)
    assert all(len(h) == 1 for h in helps.values()), helps
    assert "(default: auto)" in helps["--dtype"].pop() and ModelConfig().dtype == "auto"
    # commands that run no model do not take them
    for argv in (["train"], ["evaluate"], ["detect", "train"], ["prune-head"]):
        p = _subparser(argv)
        assert "--dtype" not in p._option_string_actions, argv
        assert "--threads" in p._option_string_actions, argv


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--n-prompts", "2"],
        ["demo", "--n-prompts", "2"],
        ["detect", "capture", "--n-prompts", "2"],
        ["prefs", "build", "--n-prompts", "2"],
        ["import", "--input", str(Path(__file__).parent / "fixtures/import/chat.jsonl")],
    ],
)
def test_model_commands_check_dtype_against_device_before_loading(argv, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(
        [*argv, "--out", str(out), "--model", "tiny:0", "--dtype", "float16", "--device", "cpu"]
    )
    assert rc == 2
    assert "float16 is not supported for models on cpu" in capsys.readouterr().err
    assert not (out / "meta.json").exists()


def test_sample_and_demo_share_their_task_defaults():
    from hsrm.bon.demo import DemoConfig
    from hsrm.sampling import TASK_DEFAULTS, SampleRunConfig

    s, d = SampleRunConfig(), DemoConfig()
    for k, v in TASK_DEFAULTS.items():
        assert getattr(s, k) == getattr(d, k) == v, k
    assert s.fewshot == "per_prompt"  # what the README calls the default


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
