"""Old module paths keep importing (with a DeprecationWarning) after best-of-N moved to hsrm.bon."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "old,new,name",
    [
        ("hsrm.evaluate", "hsrm.bon.report", "bon_report"),
        ("hsrm.scorers", "hsrm.bon.scorers", "store_scores"),
        ("hsrm.quality", "hsrm.bon.quality", "PooledProbe"),
        ("hsrm.prune", "hsrm.bon.prune", "pruning_curve"),
        ("hsrm.report_html", "hsrm.report.html", "write_bon_html"),
        ("hsrm.tables", "hsrm.report.tables", "markdown_table"),
    ],
)
def test_moved_module_is_the_new_one(old, new, name):
    """A fresh interpreter, so the import really goes through the alias and warns once."""
    code = (
        "import importlib, warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({new!r})\n"
        "assert old is new, (old, new)\n"
        f"assert old.__spec__.name == {new!r}, old.__spec__\n"
        f"assert hasattr(old, {name!r})\n"
        f"assert any({old!r} in str(x.message) and x.category is DeprecationWarning for x in w)\n"
        f"from {old} import {name}\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_pipeline_reexports_the_new_objects():
    with pytest.warns(DeprecationWarning, match="hsrm.pipeline"):
        import importlib

        import hsrm.pipeline as pl

        importlib.reload(pl)
    import hsrm.bon.demo
    import hsrm.bon.evaluate
    import hsrm.bon.train
    import hsrm.sampling
    import hsrm.splits

    assert pl.SampleRunConfig is hsrm.sampling.SampleRunConfig and pl.sample is hsrm.sampling.sample
    assert pl.TrainConfig is hsrm.bon.train.TrainConfig and pl.train is hsrm.bon.train.train
    assert pl.evaluate is hsrm.bon.evaluate.evaluate and pl.demo is hsrm.bon.demo.demo
    assert pl.prompt_folds is hsrm.splits.prompt_folds
    for name in pl.__all__:
        assert getattr(pl, name) is not None


def test_old_report_names():
    from hsrm.report import bon_markdown, rich_table
    from hsrm.report.bon import bon_markdown as bm
    from hsrm.rl import HiddenStateReward
    from hsrm.rl.reward import HiddenStateReward as H

    assert bon_markdown is bm and callable(rich_table) and HiddenStateReward is H
