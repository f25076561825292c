"""The evaluation a finished training run leaves in RUN_DIR/eval/ is the run's own final test pass:
same weights, same test-time augmentation, no second pass, and nothing left from an earlier run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import resnetkit
from resnetkit import api
from resnetkit.cli import main

RUN = dict(data="synthetic:160", epochs=1, batch_size=32, eval_every=0, model_kwargs={"width_mult": 0.25},
           device="cpu", precision="fp32", tta="flip-shift", seed=3)


def _train(out: Path, **extra) -> tuple[dict, dict]:
    resnetkit.train("resnet20", out=str(out), report=True, command="resnetkit train ...", **{**RUN, **extra})
    result = json.loads((out / "result.json").read_text())
    ev = json.loads((out / "eval" / "metrics.json").read_text())
    return result, ev


def test_eval_files_come_from_the_final_test_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def second_pass(*_a, **_k):
        raise AssertionError("the report evaluated last.pt again")

    monkeypatch.setattr(api, "evaluate", second_pass)
    result, ev = _train(tmp_path / "run")
    assert ev["tta"] == "flip-shift" and ev["weights"] == "raw"
    for key in ("top1", "top5", "loss", "count"):
        assert ev[key] == result["test"][key], key
    assert sum(ev["per_class_metrics"]["support"]) == ev["count"] == sum(map(sum, ev["confusion"]))
    assert (tmp_path / "run" / "eval" / "confusion.png").is_file()
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert f'{result["test"]["top1"]:.2%}' in html


def test_without_logits_last_pt_is_evaluated_as_training_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(api, "_eval_from_training", lambda *_a: None)  # e.g. a DDP run
    result, ev = _train(tmp_path / "run")
    assert ev["tta"] == "flip-shift"
    assert ev["count"] == result["test"]["count"]
    assert abs(ev["top1"] - result["test"]["top1"]) <= 1 / ev["count"]  # same weights; eval batches differ
    # `resnetkit eval` without --tta says how training measured, so the two numbers are not confused
    assert main(["eval", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "plain"), "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "training measured its test accuracy with --tta flip-shift" in said
    assert main(["eval", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "same"), "--device", "cpu",
                 "--tta", "flip-shift"]) == 0
    assert "training measured" not in capsys.readouterr().out


def test_overwritten_run_leaves_no_stale_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train(out)
    stale = json.loads((out / "eval" / "metrics.json").read_text())
    stale["top1"] = -1.0
    (out / "eval" / "metrics.json").write_text(json.dumps(stale))
    (out / "explain" / "999-old.png").write_bytes(b"not a png")
    result, ev = _train(out, overwrite=True, seed=4)
    assert ev["top1"] == result["test"]["top1"] != -1.0
    assert not (out / "explain" / "999-old.png").exists()
    assert len(list((out / "explain").glob("*.png"))) == min(8, len(ev["classes"]))  # the report draws 8


def test_default_eval_after_training_writes_beside_the_reports_evaluation(tmp_path: Path, capsys) -> None:
    """`resnetkit eval RUN/best.pt` right after `resnetkit train` (the README's order) runs: training's
    report holds RUN/eval, so the evaluation goes to RUN/eval-2, then RUN/eval-3; nothing is replaced."""
    out = tmp_path / "run"
    _train(out, tta="none")
    before = (out / "eval" / "metrics.json").read_bytes()
    for n in (2, 3):
        assert main(["eval", str(out / "best.pt"), "--device", "cpu"]) == 0
        assert f"wrote {out / f'eval-{n}' / 'metrics.json'}" in capsys.readouterr().out
    assert (out / "eval" / "metrics.json").read_bytes() == before
    ev = json.loads((out / "eval-3" / "metrics.json").read_text())
    # best.pt holds last.pt's weights here, no TTA either side; the batches differ (last-bit rounding)
    assert abs(ev["top1"] - json.loads(before)["top1"]) <= 1 / ev["count"]
