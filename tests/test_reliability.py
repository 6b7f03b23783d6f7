"""Reliability (issue 15): malformed input ends in one message, exit code 2, no traceback and
nothing written; output folders are never destroyed; one writer per folder; kills leave nothing
half-made that a later command would trust.

The malformed-input corpus is ``CASES`` below (inputs under ``tests/fixtures/bad/`` plus damage
done in code to a tiny store and head). Each case is an argv run through the CLI in-process; a few
also run as real ``python -m hsrm`` processes. New commands add rows to ``CASES``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from hsrm.cli import main
from hsrm.errors import HsrmError
from hsrm.io import atomic_dir, check_out, exclusive, output_kind
from hsrm.store import Store, StoreWriter
from hsrm.store_write import _RESUME_KEYS

BAD = Path(__file__).parent / "fixtures" / "bad"
SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = [
    "--model",
    "tiny:0",
    "--n-prompts",
    "8",
    "--n",
    "4",
    "--max-new-tokens",
    "3",
    "--layers",
    "every:1",
    "--shard-prompts",
    "4",
    "--threads",
    "1",
]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny store (both label classes: labelled by whether an answer was extracted), a probe
    head with its training record, and a HARP head."""
    from hsrm.tasks.synthetic import SyntheticTask

    d = tmp_path_factory.mktemp("rel")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SyntheticTask, "check", lambda self, ext, p: ext is None)
        assert main(["sample", "--out", str(d / "run")] + TINY) == 0
    assert (
        main(
            ["train", str(d / "run"), "--head", "probe", "--layers", "all"]
            + ["--out", str(d / "head")]
        )
        == 0
    )
    assert (
        main(
            ["detect", "train", "--store", str(d / "run"), "--head", "harp", "--split", "all"]
            + ["--param", "projection=random", "epochs=1", "--out", str(d / "harp")]
        )
        == 0
    )
    return d


@pytest.fixture
def ws(base, tmp_path):
    """A private copy of the store and heads for one test to damage."""
    for name in ("run", "head", "harp"):
        shutil.copytree(base / name, tmp_path / name)
    return tmp_path


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


# ----------------------------------------------------------------------------------------------
# damage, done to the workspace copy before a case runs
def _edit_json(path: Path, fn: Callable[[dict], None]) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _cut(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])


def _long_prompt(ws: Path) -> None:
    # the tiny model's context is 1024 tokens; this prompt is far longer
    row = {"id": "long", "prompt": "seven " * 20000, "answer": "7"}
    (ws / "long.jsonl").write_text(json.dumps(row) + "\n")


def _foreign(ws: Path) -> None:
    (ws / "mine").mkdir()
    (ws / "mine" / "notes.txt").write_text("my notes")


def _file(ws: Path) -> None:
    (ws / "afile").write_text("precious")


def _edit_tensors(path: Path, fn: Callable[[dict], None]) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(str(path))
    fn(t)
    save_file(t, str(path))


def _old_store(ws: Path) -> None:
    """The store as an hsrm before issue 33 wrote it: no summaries, no file list."""
    run = ws / "run"
    _edit_json(run / "meta.json", lambda d: [d.pop(k) for k in ("files", "counts")])
    for j in run.glob("shard-*.json"):
        _edit_json(j, lambda d: d.pop("summary"))


def _narrow(ws: Path) -> None:
    """A shard written consistently (summary and file list agree) but narrower than the model."""
    run = ws / "run"
    _old_store(ws)
    _edit_tensors(
        run / "shard-00000.safetensors",
        lambda t: t.update(hidden=t["hidden"][..., :8].contiguous()),
    )


def _nan_head(ws: Path) -> None:
    _edit_tensors(
        ws / "head" / "model.safetensors",
        lambda t: t.update({k: torch.full_like(v, float("nan")) for k, v in t.items()}),
    )


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_question(path: Path) -> None:
    """One letter of a question changed in place: the index is still valid JSON of the same
    size, so only its checksum can tell."""
    data = path.read_bytes()
    at = data.index(b'"question": "') + len(b'"question": "')
    path.write_bytes(data[:at] + (b"Q" if data[at : at + 1] != b"Q" else b"R") + data[at + 1 :])


def _other_model_head(ws: Path) -> None:
    shutil.copytree(ws / "head", ws / "head2")
    _edit_json(ws / "head2" / "config.json", lambda d: d["fingerprint"].update(hidden_size=64))


def _recs(fn: Callable[[list], None]) -> Callable[[Path], None]:
    return lambda ws: _edit_json(ws / "run" / "shard-00000.json", lambda d: fn(d["records"]))


DAMAGE: dict[str, Callable[[Path], None]] = {
    # -- stores that must prove they are whole (issue 33) --
    "meta_layers_40": lambda ws: _edit_json(
        ws / "run" / "meta.json", lambda d: d.update(layers=list(range(40)))
    ),
    "meta_layers_4": lambda ws: _edit_json(
        ws / "run" / "meta.json", lambda d: d.update(layers=[0, 1, 2, 3])
    ),
    "record_deleted": _recs(lambda r: r.pop(5)),
    "record_deleted_last": _recs(lambda r: r.pop()),
    "record_duplicated": _recs(lambda r: r.append(dict(r[-1]))),
    "rows_negative": _recs(lambda r: r[0].update(rows=-3)),
    "prompt_id_foreign": _recs(lambda r: r[3].update(prompt_id="synthetic-99999")),
    "label_yes": _recs(lambda r: r[2].update(label="yes")),
    "label_one": _recs(lambda r: r[2].update(label=1)),
    "offset_string": _recs(lambda r: r[1].update(offset="3")),
    "hidden_narrow": lambda ws: _edit_tensors(
        ws / "run" / "shard-00000.safetensors",
        lambda t: t.update(hidden=t["hidden"][..., :8].contiguous()),
    ),
    "hidden_narrow_consistent": _narrow,
    "old_store_record_deleted": lambda ws: (_old_store(ws), _recs(lambda r: r.pop(5))(ws)),
    "old_store_rows_negative": lambda ws: (
        _old_store(ws),
        _recs(lambda r: r[0].update(rows=-3))(ws),
    ),
    "summary_records": lambda ws: _edit_json(
        ws / "run" / "shard-00001.json", lambda d: d["summary"].update(records=15)
    ),
    "meta_counts": lambda ws: _edit_json(
        ws / "run" / "meta.json", lambda d: d["counts"].update(records=33)
    ),
    "shard_added": lambda ws: [
        shutil.copy(ws / "run" / f"shard-00001.{x}", ws / "run" / f"shard-00002.{x}")
        for x in ("json", "safetensors")
    ],
    "files_unlisted": lambda ws: _edit_json(
        ws / "run" / "meta.json", lambda d: d["files"].pop("shard-00001.json")
    ),
    "shard_pair_removed": lambda ws: [
        (ws / "run" / f"shard-00001.{x}").unlink() for x in ("json", "safetensors")
    ],
    "shard_byte_flipped": lambda ws: _flip_byte(ws / "run" / "shard-00001.safetensors"),
    "index_byte_flipped": lambda ws: _edit_question(ws / "run" / "shard-00000.json"),
    "format_version_string": lambda ws: _edit_json(
        ws / "run" / "meta.json", lambda d: d.update(format_version="1")
    ),
    "meta_files_string": lambda ws: _edit_json(
        ws / "run" / "meta.json", lambda d: d.update(files="all")
    ),
    # -- heads --
    "head_nan": _nan_head,
    "head_layers_out_of_range": lambda ws: _edit_json(
        ws / "head" / "config.json", lambda d: d.update(layers=[0, 1, 50])
    ),
    "head_format_string": lambda ws: _edit_json(
        ws / "head" / "config.json", lambda d: d.update(format_version="1")
    ),
    "head_other_model": _other_model_head,
    "shard_missing": lambda ws: (ws / "run" / "shard-00000.safetensors").unlink(),
    "shard_truncated": lambda ws: _cut(ws / "run" / "shard-00001.safetensors", 0.5),
    "shard_tail_cut": lambda ws: _cut(
        ws / "run" / "shard-00001.safetensors",
        (ws / "run" / "shard-00001.safetensors").stat().st_size - 16,
    ),
    "shard_header_cut": lambda ws: _cut(ws / "run" / "shard-00000.safetensors", 20),
    "shard_json": lambda ws: _cut(ws / "run" / "shard-00000.json", 0.5),
    "meta_json": lambda ws: _cut(ws / "run" / "meta.json", 0.5),
    "head_truncated": lambda ws: _cut(ws / "head" / "model.safetensors", 0.5),
    "head_missing": lambda ws: (ws / "head" / "model.safetensors").unlink(),
    "head_unknown_param": lambda ws: _edit_json(
        ws / "head" / "config.json", lambda d: d["params"].update(bogus=1)
    ),
    "head_param_type": lambda ws: _edit_json(
        ws / "head" / "config.json", lambda d: d["params"].update(C="lots")
    ),
    "head_params_string": lambda ws: _edit_json(
        ws / "head" / "config.json", lambda d: d.update(params="C=1")
    ),
    "head_layers_string": lambda ws: _edit_json(
        ws / "head" / "config.json", lambda d: d.update(layers="0,4")
    ),
    "head_param_layer_string": lambda ws: _edit_json(
        ws / "head" / "config.json", lambda d: d["params"].update(layer="0,4")
    ),
    "harp_unknown_param": lambda ws: _edit_json(
        ws / "harp" / "config.json", lambda d: d["params"].update(bogus=1)
    ),
    "harp_hub_model": lambda ws: _edit_json(
        ws / "harp" / "config.json", lambda d: d["fingerprint"].update(name="some-org/evil-model")
    ),
    "no_training_record": lambda ws: (ws / "head" / "training.json").unlink(),
    "long_prompt": _long_prompt,
    "foreign_folder": _foreign,
    "file": _file,
}


@dataclass
class Case:
    id: str
    argv: str  # placeholders: {run} {head} {harp} {ws} {bad}
    expect: list[str]  # substrings of the message (file / line / field)
    damage: str | None = None
    group: str = "traceback"
    subprocess: bool = False  # also run as a real `python -m hsrm` process
    tags: list[str] = field(default_factory=list)


S = "sample --model tiny:0 --n 2 --max-new-tokens 2 --threads 1"
SY = "sample --model tiny:0"  # YAML cases: no flag may override the file's bad value
EVAL = "evaluate {run} --head {head} --n-boot 10 --out {ws}/ev"
TRAIN = "train {run} --head probe --layers all --out {ws}/h2"
DSCORE = "detect score --head {harp} --question Q --answer A"

CASES = [
    # -- tracebacks in the issue -------------------------------------------------------------
    Case(
        "jsonl_not_utf8",
        S + " --task jsonl:{bad}/nonutf8.jsonl --out {ws}/o",
        ["nonutf8.jsonl:2", "UTF-8"],
        subprocess=True,
    ),
    Case(
        "bbh_not_utf8",
        S + " --task bbh:{bad}/nonutf8_bbh.json --out {ws}/o",
        ["nonutf8_bbh.json", "UTF-8"],
    ),
    Case(
        "bbh_too_few_questions_for_shots",
        S + " --task bbh:{bad}/../tasks/bbh_small.json --shots 6 --out {ws}/o",
        ["bbh_small.json", "6 few-shot examples need 7 distinct questions", "--shots 0"],
    ),
    Case(
        "shots_negative",
        S + " --task bbh:{bad}/../tasks/bbh_small.json --shots -1 --out {ws}/o",
        ["--shots", ">= 0"],
    ),  # fmt: skip
    Case(
        "fewshot_unknown",
        S + " --task bbh:{bad}/../tasks/bbh_small.json --fewshot some --out {ws}/o",
        ["fewshot must be one of", "per_prompt"],
    ),
    Case(
        "pairs_not_utf8",
        "prefs train --pairs {bad}/nonutf8_pairs.jsonl --out {ws}/o --head probe",
        ["nonutf8_pairs.jsonl:1", "UTF-8"],
    ),
    Case(
        "pairs_csv_not_utf8",
        "prefs train --pairs {bad}/nonutf8_truthfulqa.csv --out {ws}/o --head probe",
        ["nonutf8_truthfulqa.csv:2", "UTF-8"],
    ),
    Case(
        "train_shard_missing",
        TRAIN,
        ["shard-00000.safetensors", "missing"],
        "shard_missing",
    ),
    Case("evaluate_shard_missing", EVAL, ["shard-00000.safetensors", "missing"], "shard_missing"),
    Case("train_shard_truncated", TRAIN, ["shard-00001.safetensors"], "shard_truncated"),
    Case("evaluate_shard_truncated", EVAL, ["shard-00001.safetensors"], "shard_truncated"),
    Case(
        "detect_train_shard_truncated",
        "detect train --store {run} --head probe --out {ws}/o",
        ["shard-00001.safetensors"],
        "shard_truncated",
    ),
    Case("train_shard_tail_cut", TRAIN, ["shard-00001.safetensors", "truncated"], "shard_tail_cut"),
    Case("train_shard_header_cut", TRAIN, ["shard-00000.safetensors"], "shard_header_cut"),
    Case("train_shard_json", TRAIN, ["shard-00000.json", "malformed JSON"], "shard_json"),
    Case("evaluate_shard_json", EVAL, ["shard-00000.json"], "shard_json"),
    Case("train_meta_json", TRAIN, ["meta.json", "malformed JSON"], "meta_json"),
    Case(
        "detect_train_meta_json",
        "detect train --store {run} --head probe --out {ws}/o",
        ["meta.json"],
        "meta_json",
    ),
    Case("evaluate_head_truncated", EVAL, ["model.safetensors", "truncated"], "head_truncated"),
    Case("evaluate_head_missing", EVAL, ["model.safetensors", "missing"], "head_missing"),
    Case(
        "evaluate_head_unknown_param",
        EVAL,
        ["config.json", "params", "bogus"],
        "head_unknown_param",
    ),
    Case("evaluate_head_param_type", EVAL, ["config.json", "params.C"], "head_param_type"),
    Case("evaluate_head_params_string", EVAL, ["config.json", "'params'"], "head_params_string"),
    Case(
        "detect_evaluate_head_unknown_param",
        "detect evaluate --store {run} --head {head} --n-boot 10",
        ["config.json", "bogus"],
        "head_unknown_param",
    ),
    Case(
        "detect_evaluate_head_truncated",
        "detect evaluate --store {run} --head {head} --n-boot 10",
        ["model.safetensors"],
        "head_truncated",
    ),
    Case(
        "detect_score_head_unknown_param",
        DSCORE + " --model tiny:0",
        ["config.json", "bogus"],
        "harp_unknown_param",
    ),
    Case(
        "yaml_n_four",
        SY + " --config {bad}/n_four.yaml --out {ws}/o",
        ["n_four.yaml:3", "'n'", "integer"],
    ),
    Case(
        "yaml_temperature_hot",
        SY + " --config {bad}/temperature_hot.yaml --out {ws}/o",
        ["temperature_hot.yaml:2", "'temperature'"],
    ),
    Case(
        "yaml_n_prompts_string",
        SY + " --config {bad}/n_prompts_string.yaml --out {ws}/o",
        ["n_prompts_string.yaml:2", "'n_prompts'"],
    ),
    Case(
        "yaml_test_frac_lots",
        "train {run} --config {bad}/test_frac_lots.yaml --out {ws}/o",
        ["test_frac_lots.yaml:3", "'test_frac'"],
    ),
    Case(
        "yaml_params_string",
        "train {run} --config {bad}/params_string.yaml --out {ws}/o",
        ["params_string.yaml:3", "'params'", "mapping"],
    ),
    Case("layers_every_x", S + " --layers every:x --out {ws}/o", ["every:x"]),
    Case("train_layers_every_x", "train {run} --layers every:x --out {ws}/o", ["every:x"]),
    Case("threads_negative", S + " --threads -3 --out {ws}/o", ["--threads", ">= 0"]),
    Case(
        "params_malformed",
        "train {run} --params {{bad --out {ws}/o",
        ["--params", "not valid JSON"],
    ),
    Case("params_not_object", "train {run} --params [1] --out {ws}/o", ["--params", "object"]),
    Case(
        "n_boot_negative",
        "evaluate {run} --head {head} --n-boot -1 --out {ws}/ev",
        ["--n-boot", ">= 1"],
    ),
    Case(
        "detect_n_boot_negative",
        "detect evaluate --store {run} --head {head} --n-boot -1",
        ["--n-boot"],
    ),
    Case(
        "train_out_is_file",
        "train {run} --head probe --layers all --out {ws}/afile",
        ["afile", "is a file"],
        "file",
    ),
    Case("sample_out_is_file", S + " --out {ws}/afile", ["afile", "is a file"], "file"),
    Case(
        "evaluate_out_is_file",
        "evaluate {run} --head {head} --out {ws}/afile",
        ["afile", "is a file"],
        "file",
    ),
    Case("shard_prompts_zero", S + " --shard-prompts 0 --out {ws}/o", ["--shard-prompts", ">= 1"]),
    Case("temperature_nan", S + " --temperature nan --out {ws}/o", ["--temperature", "finite"]),
    Case(
        "prompt_too_long",
        S + " --task jsonl:{ws}/long.jsonl --out {ws}/o",
        ["'long'", "context"],
        "long_prompt",
    ),
    # -- accepted when it should be refused ----------------------------------------------------
    Case(
        "answer_list",
        S + " --task jsonl:{bad}/answer_list.jsonl --out {ws}/o",
        ["answer_list.jsonl:1", "'answer'"],
        group="accepted",
    ),
    Case(
        "id_null",
        S + " --task jsonl:{bad}/id_null.jsonl --out {ws}/o",
        ["id_null.jsonl:2", "'id'"],
        group="accepted",
    ),
    Case(
        "prompt_object",
        S + " --task jsonl:{bad}/prompt_object.jsonl --out {ws}/o",
        ["prompt_object.jsonl:1", "'prompt'"],
        group="accepted",
    ),
    Case(
        "n_prompts_negative",
        S + " --n-prompts -1 --out {ws}/o",
        ["--n-prompts", ">= 1"],
        group="accepted",
    ),
    Case(
        "head_layers_string",
        EVAL,
        ["config.json", "'layers'", "0,4"],
        "head_layers_string",
        group="accepted",
    ),
    Case(
        "head_param_layer_string",
        EVAL,
        ["config.json", "params.layer"],
        "head_param_layer_string",
        group="accepted",
    ),
    Case(
        "train_params_layers_string",
        'train {run} --head elhsr --params {{"layers":"0,4"}} --out {ws}/o',
        ["layers", "0,4"],
        group="accepted",
    ),
    # -- data loss ---------------------------------------------------------------------------
    Case(
        "train_out_is_store",
        "train {run} --head probe --layers all --out {run}",
        ["input"],
        group="data-loss",
        subprocess=True,
    ),
    Case(
        "train_out_holds_store",
        "train {run} --head probe --layers all --out {ws}",
        ["input"],
        group="data-loss",
    ),
    Case(
        "train_out_foreign",
        "train {run} --head probe --layers all --out {ws}/mine",
        ["mine", "not empty", "--overwrite"],
        "foreign_folder",
        group="data-loss",
    ),
    Case(
        "sample_out_foreign",
        S + " --out {ws}/mine",
        ["mine", "not empty"],
        "foreign_folder",
        group="data-loss",
    ),
    Case(
        "evaluate_out_foreign",
        "evaluate {run} --head {head} --out {ws}/mine",
        ["mine", "not empty"],
        "foreign_folder",
        group="data-loss",
    ),
    Case(
        "sample_out_is_head",
        S + " --out {head}",
        ["holds an hsrm head", "writes a store"],
        group="data-loss",
    ),
    Case(
        "evaluate_out_is_head",
        "evaluate {run} --head {head} --out {harp}",
        ["holds an hsrm head"],
        group="data-loss",
    ),
    Case(
        "detect_train_out_is_store",
        "detect train --store {run} --head probe --out {run}",
        ["input"],
        group="data-loss",
    ),
    Case(
        "demo_out_is_store",
        "demo --model tiny:0 --n-prompts 4 --n 2 --out {run}",
        ["holds an hsrm store", "writes a demo"],
        group="data-loss",
    ),
    Case(
        "demo_unknown_device",
        "demo --model tiny:0 --n-prompts 4 --n 2 --out {ws}/d --device tpu",
        ["device", "'tpu'"],
    ),
    Case(
        "demo_train_n_zero",
        "demo --model tiny:0 --n-prompts 4 --n 2 --out {ws}/d --train-n 0",
        ["--train-n", ">= 1"],
    ),
    Case(
        "sample_skips_every_prompt",
        "sample --model tiny:0 --task jsonl:{bad}/../tasks/qa.jsonl --skip-prompts 1000 "
        "--out {ws}/s",
        ["no prompts after the first 1000"],
    ),
    Case(
        "demo_half_on_cpu",
        "demo --model tiny:0 --n-prompts 4 --n 2 --out {ws}/d --device cpu --dtype float16",
        ["float16", "cpu"],
    ),
    Case(
        "sae_train_out_is_head",
        "sae train --model tiny:0 --data {bad}/../prefs/duplicate_id.jsonl --out {head}",
        ["holds an hsrm head", "writes a sae"],
        group="data-loss",
    ),
    Case(
        "evaluate_no_training_record",
        EVAL,
        ["training.json", "--allow-unknown-training"],
        "no_training_record",
        group="data-loss",
    ),
    # -- stores prove they are whole (issue 33) ---------------------------------------------
    Case("meta_layers_40", TRAIN, ["meta.json", "'layers'", "0..3"], "meta_layers_40", "accepted"),
    Case(
        "meta_layers_4",
        TRAIN,
        ["shard-00000.safetensors", "'hidden'", "[48, 3, 32]", "[48, 4, 32]"],
        "meta_layers_4",
        "accepted",
    ),
    Case(
        "record_deleted",
        TRAIN,
        ["shard-00000.json", "records[5]", "'offset'"],
        "record_deleted",
        "accepted",
    ),
    Case(
        "record_deleted_last",
        EVAL,
        ["shard-00000.safetensors", "rows", "shard-00000.json"],
        "record_deleted_last",
        "accepted",
    ),
    Case(
        "record_duplicated",
        TRAIN,
        ["shard-00000.json", "records[16]", "appears twice"],
        "record_duplicated",
        "accepted",
    ),
    Case("rows_negative", TRAIN, ["shard-00000.json", "'rows'", "-3"], "rows_negative", "accepted"),
    Case(
        "prompt_id_foreign",
        TRAIN,
        ["shard-00000.json", "records[3]", "'prompt_id'", "synthetic-99999"],
        "prompt_id_foreign",
        "accepted",
    ),
    Case("label_yes", TRAIN, ["shard-00000.json", "records[2]", "'label'", "'yes'"], "label_yes"),
    Case("label_one", EVAL, ["shard-00000.json", "'label'"], "label_one", "accepted"),
    Case("offset_string", TRAIN, ["shard-00000.json", "'offset'", "'3'"], "offset_string"),
    Case(
        "hidden_narrow",
        TRAIN,
        ["shard-00000.safetensors", "'hidden'", "[48, 3, 8]", "width (32)"],
        "hidden_narrow",
    ),
    Case(
        "hidden_narrow_old_store",
        TRAIN,
        ["shard-00000.safetensors", "'hidden'", "width (32)"],
        "hidden_narrow_consistent",
    ),
    Case(
        "old_store_record_deleted",
        TRAIN,
        ["shard-00000.json", "records[5]"],
        "old_store_record_deleted",
        "accepted",
    ),
    Case(
        "old_store_rows_negative",
        TRAIN,
        ["shard-00000.json", "'rows'"],
        "old_store_rows_negative",
        "accepted",
    ),
    Case(
        "summary_records",
        TRAIN,
        ["shard-00001.json", "summary.records", "15", "16"],
        "summary_records",
        "accepted",
    ),
    Case(
        "meta_counts", TRAIN, ["meta.json", "counts.records", "33", "32"], "meta_counts", "accepted"
    ),
    Case(
        "shard_added",
        TRAIN,
        ["shard-00002.json", "also in shard-00001.json"],
        "shard_added",
        "accepted",
    ),
    Case(
        "files_unlisted",
        TRAIN,
        ["shard-00001.json", "not listed in meta.json's files"],
        "files_unlisted",
        "accepted",
    ),
    Case(
        "shard_pair_removed",
        EVAL,
        ["shard-00001.json", "missing", "meta.json"],
        "shard_pair_removed",
        "accepted",
    ),
    Case(
        "check_shard_byte_flipped",
        "check {run}",
        ["shard-00001.safetensors", "sha256"],
        "shard_byte_flipped",
        "accepted",
        subprocess=True,
    ),
    Case(
        "check_index_edited",
        "check {run}",
        ["shard-00000.json", "sha256"],
        "index_byte_flipped",
        "accepted",
    ),
    Case(
        "check_record_deleted", "check {run}", ["shard-00000.json", "records[5]"], "record_deleted"
    ),
    Case("check_not_a_store", "check {ws}", ["not a sample store"]),
    Case(
        "format_version_string",
        TRAIN,
        ["meta.json", "format_version '1' is not supported (this hsrm reads 1)"],
        "format_version_string",
        "messages",
    ),
    Case("meta_files_string", TRAIN, ["meta.json", "'files'"], "meta_files_string"),
    # -- heads (issue 33) ----------------------------------------------------------------------
    Case("head_nan", EVAL, ["model.safetensors", "not finite"], "head_nan", "accepted"),
    Case(
        "head_layers_out_of_range",
        EVAL,
        ["config.json", "'layers'", "[50]", "out of range"],
        "head_layers_out_of_range",
        "messages",
    ),
    Case(
        "head_format_string",
        EVAL,
        ["config.json", "format_version '1' is not supported (this hsrm reads 1)"],
        "head_format_string",
        "messages",
    ),
    Case(
        "heads_of_two_models",
        EVAL + " --head {ws}/head2",
        ["{ws}/head2:", "{ws}/head on", "d=64", "d=32"],
        "head_other_model",
        "messages",
    ),
    # -- config checked before any model loads, messages name both values (issue 33) ---------
    Case("store_dtype_bad", S + " --store-dtype int4 --out {ws}/o", ["--store-dtype", "'int4'"]),
    Case("pool_bad", S + " --pool max --out {ws}/o", ["--pool", "'max'", "mean"]),
    Case(
        "yaml_key_twice",
        SY + " --config {bad}/dup_key.yaml --out {ws}/o",
        ["dup_key.yaml:4", "'n'", "twice", "line 2"],
        group="accepted",
    ),
    Case(
        "answer_int",
        S + " --task jsonl:{bad}/answer_int.jsonl --out {ws}/o",
        ["answer_int.jsonl:1", "'answer'", '"6"'],
        group="accepted",
    ),
    Case(
        "out_under_a_file",
        S + " --out {ws}/afile/sub",
        ["afile/sub", "afile is a file"],
        "file",
        "messages",
    ),
    Case(
        "train_out_under_a_file",
        "train {run} --head probe --layers all --out {ws}/afile/sub",
        ["afile is a file"],
        "file",
        "messages",
    ),
    Case(
        "resume_other_settings",
        "sample --out {run} " + " ".join(TINY).replace("--n 4", "--n 2"),
        [
            "meta.json",
            "existing run has sampling={{'n': 4}}",
            "this run asks for sampling={{'n': 2}}",
        ],
        group="messages",
    ),
    Case(
        "resume_other_task",
        "sample --out {run} " + " ".join(TINY).replace("--n-prompts 8", "--n-prompts 6"),
        ["meta.json", "existing run has task={{'n': 8}}", "task={{'n': 6}}"],
        group="messages",
    ),
    # -- trust -------------------------------------------------------------------------------
    Case(
        "detect_score_hub_model",
        DSCORE,
        ["some-org/evil-model", "--model"],
        "harp_hub_model",
        group="trust",
    ),
]


def _argv(case: Case, ws: Path) -> list[str]:
    return _fmt(case.argv, ws).split()


def _fmt(s: str, ws: Path) -> str:
    return s.format(run=ws / "run", head=ws / "head", harp=ws / "harp", ws=ws, bad=BAD)


def test_corpus_is_counted():
    """The report's count; ids are unique so a failure names its case."""
    assert len({c.id for c in CASES}) == len(CASES) >= 95


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exit_2_nothing_written(case, ws, capsys):
    if case.damage:
        DAMAGE[case.damage](ws)
    before = _listing(ws)
    bad_before = _listing(BAD)
    rc = main(_argv(case, ws))
    out, err = capsys.readouterr()
    msg = " ".join((out + err).split())  # rich wraps long lines
    assert rc == 2, msg
    assert "Traceback" not in msg
    for s in case.expect:
        s = _fmt(s, ws)
        assert s in msg, f"{s!r} not in {msg!r}"
    assert _listing(ws) == before, "a refused command wrote or deleted something"
    assert _listing(BAD) == bad_before


SUB = [c for c in CASES if c.subprocess]


@pytest.mark.parametrize("case", SUB, ids=[c.id for c in SUB])
def test_bad_input_real_process(case, ws):
    if case.damage:
        DAMAGE[case.damage](ws)
    before = _listing(ws)
    p = subprocess.run(
        [sys.executable, "-m", "hsrm", *_argv(case, ws)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    msg = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 2, msg
    assert "Traceback" not in msg
    for s in case.expect:
        assert _fmt(s, ws) in msg, msg
    assert _listing(ws) == before


# ----------------------------------------------------------------------------------------------
# output folders
def test_overwrite_keeps_what_hsrm_did_not_write(ws, capsys):
    _foreign(ws)
    argv = [
        "train",
        str(ws / "run"),
        "--head",
        "probe",
        "--layers",
        "all",
        "--out",
        str(ws / "mine"),
    ]
    assert main(argv + ["--overwrite"]) == 0
    assert (ws / "mine" / "notes.txt").read_text() == "my notes"
    assert output_kind(ws / "mine") == "head"
    assert (ws / "mine" / "training.json").exists()
    # an earlier head is replaced without --overwrite; the notes still stay
    assert main(argv) == 0
    assert (ws / "mine" / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith(".")) == []


def test_same_kind_replaced_in_one_swap(ws):
    argv = ["train", str(ws / "run"), "--head", "probe", "--layers", "all", "--out", str(ws / "h")]
    assert main(argv) == 0
    first = json.loads((ws / "h" / "training.json").read_text())
    assert main(argv + ["--test-frac", "0.5"]) == 0
    second = json.loads((ws / "h" / "training.json").read_text())
    assert first["config"]["test_frac"] == 0.3 and second["config"]["test_frac"] == 0.5
    assert sorted(os.listdir(ws / "h")) == [
        ".hsrm",
        "README.md",
        "config.json",
        "model.safetensors",
        "training.json",
    ]
    assert not [p for p in ws.iterdir() if p.name.startswith(".")]


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "d", "test") as t:
            (t / "x").write_text("x")
        from hsrm.io import atomic_write_text

        atomic_write_text(tmp_path / "f.txt", "y")
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d" / ".hsrm").stat().st_mode & 0o777 == 0o640


def test_stale_temporaries_are_cleaned(ws):
    # left by killed writers: a head's temp folder and swap-out folder, a store's meta/shard temps
    (ws / ".h.abc.tmp").mkdir()
    (ws / ".h.abc.tmp" / "head.safetensors").write_bytes(b"x")
    (ws / ".h.old").mkdir()
    (ws / "run" / ".meta.json.xyz.tmp").write_text("{")
    (ws / "run" / ".shard-00009.safetensors.q.tmp").write_bytes(b"x")
    assert (
        main(
            ["train", str(ws / "run"), "--head", "probe", "--layers", "all", "--out", str(ws / "h")]
        )
        == 0
    )
    assert not (ws / ".h.abc.tmp").exists() and not (ws / ".h.old").exists()
    meta = json.loads((ws / "run" / "meta.json").read_text())
    StoreWriter(
        ws / "run",
        {k: meta[k] for k in _RESUME_KEYS if k in meta},  # the same settings: it resumes
    ).close()
    assert not list((ws / "run").glob(".*.tmp"))


def test_outputs_of_older_hsrm_are_recognised(tmp_path):
    """Folders written before the .hsrm marker: an evaluate report is replaced, not refused."""
    old = tmp_path / "eval"
    old.mkdir()
    for n in ("results.json", "results.md", "bon.png"):
        (old / n).write_text("{}")
    assert output_kind(old) == "eval"
    with atomic_dir(old, "eval") as t:
        (t / "results.json").write_text("new")
    assert (old / "results.json").read_text() == "new" and not (old / "bon.png").exists()
    (old / "notes.txt").write_text("mine")
    assert output_kind(old) == "eval"  # the marker now says so
    with atomic_dir(old, "eval") as t:
        (t / "results.json").write_text("newer")
    assert (old / "notes.txt").read_text() == "mine"


def test_check_out_refuses_input_inside_out(tmp_path):
    (tmp_path / "a" / "run").mkdir(parents=True)
    with pytest.raises(HsrmError, match="input"):
        check_out(tmp_path / "a", "head", overwrite=True, inputs=[tmp_path / "a" / "run"])


def test_evaluate_allows_unknown_training_only_when_told(ws, capsys, caplog):
    (ws / "head" / "training.json").unlink()
    argv = ["evaluate", str(ws / "run"), "--head", str(ws / "head"), "--n-boot", "10"]
    assert main(argv + ["--out", str(ws / "e1")]) == 2
    assert main(argv + ["--allow-unknown-training"]) == 0  # default out: RUN/eval
    assert "training prompts are unknown" in caplog.text
    assert json.loads((ws / "run" / "eval" / "results.json").read_text())["n_prompts"] == 8
    assert Store(ws / "run").complete  # the report beside the store does not disturb it


def test_incomplete_store_warns_with_resume_command(ws, caplog):
    _edit_json(ws / "run" / "meta.json", lambda d: d.update(complete=False))
    argv = ["train", str(ws / "run"), "--head", "probe", "--layers", "all", "--out", str(ws / "h")]
    assert main(argv) == 0
    assert "incomplete store (holds 8 prompts" in caplog.text
    assert "hsrm sample --out" in caplog.text  # the command that made it, to resume it


def test_detect_score_embedded_or_named_model(ws, capsys):
    """A model named inside a head is loaded only when the user names it."""
    _edit_json(
        ws / "harp" / "config.json", lambda d: d["fingerprint"].update(name="some-org/evil-model")
    )
    argv = ["detect", "score", "--head", str(ws / "harp"), "--question", "Q", "--answer", "A"]
    assert main(argv) == 2
    assert "evil-model" in capsys.readouterr().err
    # named explicitly by the user, a model loads (here the tiny one the head was trained on)
    assert main(argv + ["--model", "tiny:0"]) == 0
    assert "p(hallucination)=" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# one writer per folder (real processes)
_HOLD = """
import sys, time
from hsrm.io import exclusive
with exclusive(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_writer_is_refused(ws, capsys):
    """A real process holds the store's lock; a second writer is refused, naming its PID, and
    writes nothing; once the holder dies the lock is free again."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(ws / "run")],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _listing(ws)
        assert main(["sample", "--out", str(ws / "run"), *TINY]) == 2
        msg = " ".join(capsys.readouterr().err.split())
        assert f"is in use by PID {holder.pid}" in msg and str(ws / "run") in msg
        argv = ["train", str(ws / "run"), "--head", "probe", "--out", str(ws / "h")]
        assert main(argv) == 0  # readers are never locked out
        for p in before:  # ... and the refused writer touched nothing
            assert (ws / p).exists()
    finally:
        holder.kill()
        holder.wait()
    with exclusive(ws / "run"):  # the kernel dropped the dead holder's lock
        pass


def test_two_samplers_one_store(tmp_path):
    """Two real `hsrm sample` runs with different settings started together into one folder:
    exactly one writes; the other is refused (in use, or, if the first already finished, the
    settings check); the store holds only the winner's shards."""
    out = tmp_path / "run"
    args = [*TINY[:2], "--n-prompts", "24", "--n", "4", "--max-new-tokens", "4"]
    args += ["--shard-prompts", "2", "--threads", "1"]
    cmd = [sys.executable, "-m", "hsrm", "sample", "--out", str(out)] + args
    procs = {
        lay: subprocess.Popen(
            cmd + ["--layers", lay],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for lay in ("every:1", "last")
    }
    res = {
        lay: (p.pid, p.wait(timeout=300), " ".join(p.communicate()[1].split()))
        for lay, p in procs.items()
    }
    winners = [lay for lay, (_, rc, _) in res.items() if rc == 0]
    assert len(winners) == 1, res
    (loser,) = set(res) - set(winners)
    _, rc, msg = res[loser]
    assert rc == 2 and "Traceback" not in msg
    assert f"in use by PID {res[winners[0]][0]}" in msg or "layers" in msg, msg
    st = Store(out)
    assert st.complete and len(st) == 24 * 4
    assert st.layers == ((0, 1, 2) if winners[0] == "every:1" else (2,))
    assert not list(out.glob(".*tmp")) and not list(tmp_path.glob(".*"))


def test_loser_waits_for_the_holders_pid(tmp_path):
    """The holder writes its PID just after it wins the lock; a loser arriving in that window
    reads an empty file and must wait for the PID rather than report "PID ?" (CI saw this)."""
    import threading

    from hsrm.io import _holder_pid

    lp = tmp_path / ".run.lock"
    lp.write_bytes(b"")
    fd = os.open(lp, os.O_RDONLY)
    try:
        late = threading.Timer(0.2, lambda: lp.write_bytes(b"4242"))
        late.start()
        assert _holder_pid(fd, wait_s=30) == "4242"
        late.join()
        lp.write_bytes(b"")
        assert _holder_pid(fd, wait_s=0.05) == "?"  # a holder that never writes: give up
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# a killed train
def test_train_killed_at_random_moments(base, tmp_path):
    """SIGKILL `hsrm train` while it fits (a random moment after it locks the head folder) and
    while it saves (when the head's temporary folder appears), two processes side by side: the
    head folder is absent or complete, evaluate never scores a training prompt, and the next
    train into the same folder leaves no stale temporaries."""
    import threading

    run = base / "run"
    n_prompts = len(set(Store(run).prompt_ids))
    rng = random.Random(0)
    env = {**_env(), "OMP_NUM_THREADS": "1"}

    def train_argv(out: Path) -> list[str]:
        return ["train", str(run), "--head", "elhsr", "--layers", "all", "--params"] + [
            '{"max_epochs": 20}',
            "--out",
            str(out),
        ]

    def kill(d: Path, moment: str) -> None:
        p = subprocess.Popen(
            [sys.executable, "-m", "hsrm", *train_argv(d / "head")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            if (d / ".head.lock").exists() if moment == "fit" else list(d.glob(".head.*.tmp")):
                break
            time.sleep(0.001)
        if moment == "fit":
            time.sleep(rng.uniform(0.0, 2.0))
        p.send_signal(signal.SIGKILL)
        p.wait()

    dirs = {m: tmp_path / m for m in ("fit", "save")}
    threads = []
    for m, d in dirs.items():
        d.mkdir()
        threads.append(threading.Thread(target=kill, args=(d, m)))
        threads[-1].start()
    for t in threads:
        t.join()
    for d in dirs.values():
        out, ev = d / "head", d / "ev"
        argv = ["evaluate", str(run), "--head", str(out), "--n-boot", "10", "--out", str(ev)]
        if out.exists():
            rec = json.loads((out / "training.json").read_text())  # complete before it appeared
            assert main(argv) == 0
            rep = json.loads((ev / "results.json").read_text())
            assert rep["n_prompts"] == n_prompts - len(rec["train_prompts"])
        else:
            assert main(argv) == 2
        assert main(train_argv(out)) == 0
        assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []
        assert (out / "training.json").exists()


def test_crash_between_fit_and_rename_leaves_no_head(ws, monkeypatch):
    """Deterministic companion of the kill test: die at the final rename."""
    import hsrm.io

    real = os.replace

    def dying_replace(src, dst):
        if Path(dst).name == "h":
            raise KeyboardInterrupt  # stands in for a kill at this exact point
        return real(src, dst)

    monkeypatch.setattr(hsrm.io.os, "replace", dying_replace)
    argv = ["train", str(ws / "run"), "--head", "probe", "--layers", "all", "--out", str(ws / "h")]
    assert main(argv) == 130
    assert not (ws / "h").exists()
    monkeypatch.setattr(hsrm.io.os, "replace", real)
    assert main(argv) == 0 and (ws / "h" / "training.json").exists()


# ----------------------------------------------------------------------------------------------
# stores prove they are whole, every OSError a message (issue 33)
def test_check_whole_store_and_old_store(ws, capsys, caplog):
    """`hsrm check` passes a fresh store; a store from before checksums still opens (its counts
    checked) and `check` says what it could not verify."""
    assert main(["check", str(ws / "run")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 shards, 8 prompts, 32 samples consistent; 4 files" in out
    meta = json.loads((ws / "run" / "meta.json").read_text())
    assert sorted(meta["files"]) == [
        "shard-00000.json",
        "shard-00000.safetensors",
        "shard-00001.json",
        "shard-00001.safetensors",
    ]
    assert meta["counts"] == {"shards": 2, "prompts": 8, "records": 32}
    _old_store(ws)
    assert len(Store(ws / "run")) == 32
    assert main(["check", str(ws / "run")]) == 0
    assert "before hsrm recorded checksums" in caplog.text


def test_config_refused_before_the_model_loads(ws, monkeypatch, capsys):
    import hsrm.sampling

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(hsrm.sampling, "load_model", no_model)
    for bad in (["--store-dtype", "int4"], ["--pool", "max"]):
        assert main(["sample", "--out", str(ws / "o"), *TINY, *bad]) == 2
        assert bad[0] in capsys.readouterr().err
    assert not (ws / "o").exists()


def test_non_finite_head_is_never_written(ws):
    from hsrm.heads.base import Head

    head = Head.load(ws / "head")
    tensors, _ = head._state()
    for t in tensors.values():
        if t.is_floating_point():
            t.fill_(float("inf"))
    with pytest.raises(HsrmError, match="not saved.*not finite"):
        head.save(ws / "h2")
    assert not (ws / "h2").exists() and not [p for p in ws.iterdir() if p.name.startswith(".")]


def test_disk_full_in_the_shard_writer_then_resume(tmp_path, monkeypatch, capsys):
    """ENOSPC in the background writer's thread (at the fsync of shard 1's tensors, where a full
    disk often shows): one message naming the file and how to resume, exit 2; the store holds
    whole shards only, and the rerun finishes it."""
    import errno
    import threading

    real_fsync = os.fsync
    calls = []

    def fsync(fd):
        if threading.current_thread().name == "hsrm-shard-writer":
            calls.append(fd)
            if len(calls) == 3:  # shard 0: tensors, index; shard 1: tensors
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "run"
    argv = ["sample", "--out", str(out), *TINY]
    assert main(argv) == 2
    msg = " ".join(capsys.readouterr().err.split())
    assert "shard-00001.safetensors: No space left on device" in msg
    assert "rerun `hsrm sample --out" in msg and "to resume" in msg
    assert "Traceback" not in msg
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "shard-00000.json",
        "shard-00000.safetensors",
    ]
    assert not json.loads((out / "meta.json").read_text())["complete"]
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(argv) == 0
    assert Store(out).complete and len(Store(out)) == 32


def _fsize_limit(n_bytes: int) -> Callable[[], None]:
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))


def test_file_too_large_sample_and_train(base, tmp_path):
    """`ulimit -f` (EFBIG) in a real process: the shard writer's thread and a head save each end
    in one message, exit 2; nothing half-written, and the store resumes."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hsrm", "sample", "--out", str(out), *TINY]
    p = subprocess.run(
        cmd, capture_output=True, text=True, env=_env(), timeout=300, preexec_fn=_fsize_limit(6000)
    )
    msg = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 2, msg
    assert "Traceback" not in msg and "File too large" in msg and "to resume" in msg
    assert "shard-00000.safetensors" in msg
    assert not list(out.glob(".*tmp")) and not list(out.glob("shard-*"))
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    assert main(["check", str(out)]) == 0
    # a head save: its files are a few KB; 1000 bytes stops one of them
    # (on the fixture's store, which has both label classes; train only reads it)
    train = [sys.executable, "-m", "hsrm", "train", str(base / "run"), "--head-type", "probe"]
    p = subprocess.run(
        train + ["--out", str(tmp_path / "h")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        preexec_fn=_fsize_limit(1000),
    )
    msg = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 2, msg
    assert "Traceback" not in msg and f"{tmp_path / 'h'}: File too large" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_sigint_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    args = [a if a != "8" else "64" for a in TINY]  # --n-prompts 64: long enough to interrupt
    cmd = [sys.executable, "-m", "hsrm", "sample", "--out", str(out), *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and not (out / "shard-00000.json").exists():
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    msg = " ".join(err.split())
    if p.returncode == 0:
        pytest.skip("sampling finished before the interrupt arrived")
    assert p.returncode == 130, msg
    assert "interrupted; the store keeps every shard written so far: rerun `hsrm sample" in msg
    assert "Traceback" not in msg
    assert main(["sample", "--out", str(out), *args]) == 0
    assert Store(out).complete and len(Store(out)) == 64 * 4


def test_out_symlink_writes_through(ws):
    """`train --out LINK` (LINK -> an earlier head): the head is replaced where the link points,
    the link stays a link, and nothing is left beside it."""
    os.symlink(ws / "head", ws / "link")
    before = json.loads((ws / "head" / "training.json").read_text())
    argv = ["train", str(ws / "run"), "--head", "probe", "--layers", "all", "--test-frac", "0.5"]
    assert main(argv + ["--out", str(ws / "link")]) == 0
    assert (ws / "link").is_symlink() and os.readlink(ws / "link") == str(ws / "head")
    after = json.loads((ws / "head" / "training.json").read_text())
    assert before["config"]["test_frac"] == 0.3 and after["config"]["test_frac"] == 0.5
    assert not [p.name for p in ws.iterdir() if p.name.startswith(".")]


# Generated damage (issue 33 asks that new cases, not only the reported ones, be refused): every
# record field set to every wrongly typed or out-of-range value, and every tensor given a wrong
# shape, must be refused by Store naming the shard, never accepted and never a traceback.
_BAD_VALUES = [None, "x", "3", -1, -3, 1.5, True, [], {}, 10**9]
_FIELDS = ["prompt_id", "sample", "label", "offset", "rows", "tok_offset", "n_tokens"]


def _store_refuses(run: Path, where: str) -> str:
    try:
        Store(run)
    except HsrmError as e:
        assert where in str(e), str(e)
        return str(e)
    raise AssertionError(f"accepted silently: {where}")


def test_generated_record_damage_is_refused(ws):
    run = ws / "run"
    j = run / "shard-00001.json"
    good = j.read_text()
    tried = 0
    for key in _FIELDS:
        for i in (0, 7, 15):
            for v in _BAD_VALUES:
                d = json.loads(good)
                if d["records"][i][key] == v or (key == "label" and isinstance(v, bool)):
                    continue  # the value it has, or another valid one
                if key == "sample" and isinstance(v, int) and not isinstance(v, bool):
                    if v not in [
                        r["sample"]
                        for r in d["records"]
                        if r["prompt_id"] == d["records"][i]["prompt_id"]
                    ]:
                        continue  # another sample number is not damage the index can see
                d["records"][i][key] = v
                j.write_text(json.dumps(d))
                _store_refuses(run, "shard-00001")
                tried += 1
    j.write_text(good)
    assert len(Store(run)) == 32
    assert tried >= 150


def test_generated_tensor_damage_is_refused(ws):
    from safetensors.torch import load_file, save_file

    run = ws / "run"
    st = run / "shard-00000.safetensors"
    good = st.read_bytes()
    names = sorted(load_file(str(st)))
    assert {"hidden", "logprobs", "token_ids", "prompt_hidden"} <= set(names)
    tried = 0
    for old in (False, True):  # with summaries, and as a store from before them
        if old:
            _old_store(ws)
        for name in names:
            for dim, delta in ((0, -1), (0, 1), (-1, -1), (None, 0)):
                st.write_bytes(good)
                t = load_file(str(st))
                x = t[name]
                if dim is None:
                    t[name] = x.reshape(-1)[: x.numel() // 2].clone()  # flattened, halved
                elif x.dim() <= (dim if dim >= 0 else x.dim() + dim) or x.shape[dim] + delta < 0:
                    continue
                else:
                    shape = list(x.shape)
                    shape[dim] += delta
                    t[name] = torch.zeros(shape, dtype=x.dtype)
                save_file(t, str(st))
                _store_refuses(run, "shard-00000")
                tried += 1
            st.write_bytes(good)
            t = load_file(str(st))
            del t[name]
            save_file(t, str(st))
            if name in ("hidden", "logprobs") or not old:
                _store_refuses(run, "shard-00000")  # missing: needed, or not what was written
                tried += 1
            st.write_bytes(good)
    assert tried >= 50
