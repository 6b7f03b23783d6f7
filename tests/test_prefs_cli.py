"""``hsrm prefs train / evaluate`` on a tiny random model: configs, --params, aliases, errors."""

import json
from pathlib import Path

from hsrm.cli import main

FIX = Path(__file__).parent / "fixtures" / "prefs"


def test_prefs_train_evaluate_config_and_params(tmp_path, capsys):
    head = tmp_path / "head"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "prefs_train:\n  head_type: denserm\n  model: 'tiny:0'\n  threads: 1\n"
        "  params: {hidden: 8, epochs: 2}\n"
    )
    base = ["prefs", "train", "--pairs", str(FIX / "tqa_small.csv"), "--out", str(head)]
    assert main([*base, "--config", str(cfg), "--params", "epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "denserm: fit on" in out
    params = json.loads((head / "config.json").read_text())["params"]
    assert params["epochs"] == 3 and params["hidden"] == 8  # the flag wins, the file fills in
    assert main([*base, "--head-type", "probe", "--model", "tiny:0", "--threads", "1"]) == 0
    assert json.loads((head / "config.json").read_text())["architecture"] == "probe"
    capsys.readouterr()
    assert main([*base, "--config", str(cfg), "--params", "{hidden: 8}"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main([*base, "--config", str(cfg), "--params", "hiden=8"]) == 2
    assert "has no parameter(s) ['hiden']" in capsys.readouterr().err
    res = tmp_path / "r.json"
    rc = main(
        ["prefs", "evaluate", "--pairs", str(FIX / "tqa_small.csv"), "--head", str(head)]
        + ["--model", "tiny:0", "--n-boot", "20", "--out", str(res), "--threads", "1"]
    )
    assert rc == 0 and set(json.loads(res.read_text())) == {"head", "log-prob"}
    assert "pairwise accuracy" in capsys.readouterr().out
