"""A mistyped hub id fails at once with one message: no retry storm, no traceback."""

from pathlib import Path

import pytest
from huggingface_hub import constants

from hsrm.errors import HsrmError
from hsrm.models import load_model

BAD = "nobody-hsrm-test/not-a-model"


def test_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HsrmError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE"):
        load_model(BAD)


def test_unreachable_hub_is_one_error(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(HsrmError, match="hub is unreachable"):
        load_model(BAD)


def test_cli_exit_code_2(monkeypatch, capsys, tmp_path):
    from hsrm.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fix = Path(__file__).parent / "fixtures" / "prefs" / "tqa_small.csv"
    out = tmp_path / "head"  # a fixed /tmp path would meet whatever another job left there
    rc = main(["prefs", "train", "--pairs", str(fix), "--out", str(out), "--model", BAD])
    err = capsys.readouterr().err
    assert rc == 2 and BAD in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written
