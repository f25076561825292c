"""``eval``'s per-class precision/recall/F1 table and its gallery of the most confident mistakes."""

from __future__ import annotations

import json
import math

import pytest
import torch

import resnetkit
from resnetkit.cli import main
from resnetkit.data.augment import normalize
from resnetkit.data.prepare import prepare_data
from resnetkit.metrics import most_confident_errors, precision_recall_f1
from resnetkit.reporting import extras, format_class_table

N = 12


def test_prf_by_hand_with_an_empty_class() -> None:
    # rows true, columns predicted; class 2 has no samples and is predicted once, class 3 never predicted
    cm = torch.tensor([[5, 1, 0, 0], [2, 6, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    t = precision_recall_f1(cm)
    assert t["support"] == [6, 9, 0, 2]
    assert t["precision"][:3] == pytest.approx([5 / 8, 6 / 8, 0.0])
    assert math.isnan(t["precision"][3])  # never predicted: undefined
    assert t["recall"][0] == pytest.approx(5 / 6) and t["recall"][1] == pytest.approx(6 / 9)
    assert math.isnan(t["recall"][2]) and math.isnan(t["f1"][2])  # no support: undefined
    assert t["recall"][3] == 0.0 and math.isnan(t["f1"][3])
    p, r = 5 / 8, 5 / 6
    assert t["f1"][0] == pytest.approx(2 * p * r / (p + r))


def test_undefined_is_null_in_json_and_dash_in_print() -> None:
    cm = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    m = {"classes": ["a", "b", "empty"], "per_class": [0.75, 1.0, 0.0], "confusion": cm.tolist()}
    m.update(extras.evaluation_extras(cm, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long),
                                      torch.zeros(0, 3, 8, 8, dtype=torch.uint8), m["classes"]))
    row = json.loads(json.dumps(m))["per_class_metrics"]
    assert row["recall"][2] is None and row["f1"][2] is None and row["precision"][2] is None
    assert row["support"] == [4, 2, 0]
    lines = format_class_table(m)
    assert lines[3].split() == ["empty", "-", "-", "-", "-", "0"]
    assert lines[1].split() == ["a", "75.00%", "100.00%", "75.00%", "0.857", "4"]


def test_most_confident_errors_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g) * 3
    targets = torch.randint(0, 7, (500,), generator=g)
    got = most_confident_errors(logits, targets, 20)
    probs = torch.softmax(logits, 1)
    mistakes = [(-float(probs[i].max()), i) for i in range(500) if int(probs[i].argmax()) != int(targets[i])]
    assert [r["index"] for r in got] == [i for _, i in sorted(mistakes)[:20]]
    assert all(r["pred"] != r["true"] for r in got)
    assert [r["prob"] for r in got] == sorted((r["prob"] for r in got), reverse=True)


def _independent_logits(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(normalize(images[i:i + 256], model.mean, model.std)).float()
                          for i in range(0, len(images), 256)])


def test_gallery_holds_exactly_the_most_confident_mistakes(cifar_run, tmp_path, monkeypatch) -> None:
    shown = {}

    def capture(images, titles, path, **kw):
        shown["images"], shown["titles"] = [torch.as_tensor(i).clone() for i in images], list(titles)
        return path

    monkeypatch.setattr(extras, "plot_gallery", capture)
    m = resnetkit.evaluate(cifar_run / "last.pt", out=tmp_path / "ev", device="cpu", precision="fp32", worst=N)
    model = resnetkit.load_checkpoint(cifar_run / "last.pt")
    ds = prepare_data(m["data"], image_size=model.image_size)
    probs = torch.softmax(_independent_logits(model, ds.test_images), 1)
    conf, pred = probs.max(1)
    wrong = (pred != ds.test_labels).nonzero().squeeze(1).tolist()
    expected = sorted(wrong, key=lambda i: (-float(conf[i]), i))[:N]
    assert len(wrong) > 1000  # 30 steps: far from perfect, plenty of mistakes to choose from
    assert [r["index"] for r in m["worst_errors"]] == expected
    assert len(shown["images"]) == N
    for img, i in zip(shown["images"], expected):
        assert torch.equal(img, ds.test_images[i].permute(1, 2, 0))
    for title, i in zip(shown["titles"], expected):
        assert ds.classes[int(ds.test_labels[i])] in title and ds.classes[int(pred[i])] in title
        assert f"{float(conf[i]):.0%}" in title


def test_class_table_matches_the_confusion_matrix(cifar_run, capsys) -> None:
    m = json.loads((cifar_run / "eval" / "metrics.json").read_text())
    cm = torch.tensor(m["confusion"], dtype=torch.float64)
    t = m["per_class_metrics"]
    assert sum(t["support"]) == m["count"] == 10_000
    for c in range(len(m["classes"])):
        assert t["support"][c] == int(cm[c].sum())
        assert t["recall"][c] == pytest.approx(float(cm[c, c] / cm[c].sum()))
        assert t["recall"][c] == pytest.approx(m["per_class"][c])
        if cm[:, c].sum() > 0:
            p, r = float(cm[c, c] / cm[:, c].sum()), t["recall"][c]
            assert t["precision"][c] == pytest.approx(p)
            assert t["f1"][c] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
        else:
            assert t["precision"][c] is None
    # the CLI prints the same table
    assert main(["eval", str(cifar_run / "last.pt"), "--out", str(cifar_run / "eval-cli"), "--worst", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["class", "accuracy", "precision", "recall", "F1", "support"]
    first = printed[1].split()
    assert first[0] == m["classes"][0] and first[-1] == str(t["support"][0])
    assert first[3] == f"{t['recall'][0]:.2%}"
    assert (cifar_run / "eval-cli" / "worst_errors.png").stat().st_size > 5_000
