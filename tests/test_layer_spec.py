"""One layer vocabulary (``hsrm.layer_spec``) for every flag that names layers."""

import pytest

from hsrm.cli import main
from hsrm.errors import HsrmError
from hsrm.layer_spec import check_layer_spec, layer_positions, parse_layers


def test_every_form_of_the_vocabulary():
    assert parse_layers("all", 4) == (0, 1, 2, 3, 4)
    assert parse_layers("last", 30) == (30,)
    assert parse_layers("mid", 30) == (15,)
    assert parse_layers("every:4", 30) == (0, 4, 8, 12, 16, 20, 24, 28, 30)
    assert parse_layers("top:11", 30) == tuple(range(20, 31))
    assert parse_layers("top:3", 2) == (0, 1, 2)
    assert parse_layers("top:8", 2) == (0, 1, 2)  # a head's default on a small model: all
    assert parse_layers("20-30", 30) == tuple(range(20, 31))
    assert parse_layers("20-30", 30) == parse_layers("top:11", 30)  # the demo's band, two ways
    assert parse_layers("0,4,8", 30) == (0, 4, 8)
    assert parse_layers("8,0,8", 30) == (8, 0)  # order kept, each once
    assert parse_layers("0, top:2", 30) == (0, 29, 30)  # terms mix
    assert parse_layers("prenorm,last", 30) == (30, 31)  # the pseudo-layer goes last
    assert parse_layers([3, 1], 30) == (3, 1)


@pytest.mark.parametrize(
    "spec, why",
    [
        ("-1", "negative layer index -1"),
        ("0,-2", "negative layer index -2"),
        ("top:0", "K >= 1"),
        ("every:0", "K >= 1"),
        ("top:x", "cannot parse"),
        ("30-20", "runs backwards"),
        ("odd", "cannot parse"),
        ("0,,4", "empty layer term"),
        ("0,40", "out of range"),
    ],
)
def test_bad_specs_name_the_flag_and_value(spec, why):
    with pytest.raises(HsrmError, match=why) as e:
        parse_layers(spec, 30, "--head-layers")
    assert str(e.value).startswith(f"--head-layers {spec!r}")
    with pytest.raises(HsrmError, match="negative"):
        parse_layers([0, -1], 30)


def test_form_check_needs_no_model():
    check_layer_spec("top:11")
    check_layer_spec("0,40")  # the range is the model's to check
    with pytest.raises(HsrmError, match="--layers '-1'"):
        check_layer_spec("-1")


def test_layer_positions_reads_the_captured_ones():
    assert layer_positions("top:8", list(range(31)), 30) == list(range(23, 31))
    assert layer_positions("top:8", [0, 10, 20, 30], 30) == [3]
    assert layer_positions("0-5", [10, 20], 30) == [0, 1]  # none captured: all of them


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["sample", "--layers=-1", "--out", "{tmp}/s"], "--layers"),
        (["train", "{tmp}/none", "--layers=-1", "--out", "{tmp}/h"], "--layers"),
        (["demo", "--head-layers=-1", "--out", "{tmp}/d"], "--head-layers"),
        (["detect", "capture", "--layers=-1", "--out", "{tmp}/c"], "--layers"),
    ],
)
def test_cli_refuses_negative_layers(argv, flag, tmp_path, capsys):
    """``--layers=-1`` was stored as layer 30; now every command refuses it, exit 2, no traceback."""
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"{flag} '-1'" in err and "negative" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["prefs", "train", "--pairs", "p.jsonl", "--out", "{tmp}/h", "--layer=-1"],
        ["sae", "train", "--data", "p.jsonl", "--out", "{tmp}/s", "--layer=-1"],
    ],
)
def test_one_layer_flags_refuse_negative_too(argv, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "--layer [-1]" in err and "negative" in err and "Traceback" not in err
