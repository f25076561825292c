"""``eval``'s per-class precision/recall/F1 table and its gallery of the most confident mistakes."""

from __future__ import annotations

import json
import math

import pytest
import torch

import resnetkit
from resnetkit import api
from resnetkit.cli import main
from resnetkit.data.augment import normalize
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


def test_eval_gallery_holds_exactly_the_most_confident_mistakes(cifar_run, session_cache, tmp_path, monkeypatch,
                                                                capsys) -> None:
    monkeypatch.setenv("RESNETKIT_CACHE", str(session_cache))
    seen = {}
    real_extras = api.evaluation_extras

    def spy(confusion, logits, labels, images, *args, **kw):
        seen.update(logits=logits.clone(), labels=labels, images=images)
        return real_extras(confusion, logits, labels, images, *args, **kw)

    def capture(images, titles, path, **kw):
        seen["shown"], seen["titles"] = [torch.as_tensor(i).clone() for i in images], list(titles)
        return path

    monkeypatch.setattr(api, "evaluation_extras", spy)
    monkeypatch.setattr(extras, "plot_gallery", capture)
    out = tmp_path / "ev"
    assert main(["eval", str(cifar_run / "last.pt"), "--out", str(out), "--worst", str(N), "--device", "cpu",
                 "--precision", "fp32"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    probs = torch.softmax(seen["logits"], 1)
    conf, pred = probs.max(1)
    wrong = (pred != seen["labels"]).nonzero().squeeze(1).tolist()
    expected = sorted(wrong, key=lambda i: (-float(conf[i]), i))[:N]  # brute force over every test image
    assert len(seen["logits"]) == 10_000 and len(wrong) > 1000  # 30 steps: plenty of mistakes to choose from
    assert [r["index"] for r in m["worst_errors"]] == expected
    # the logits at those indices are the model's on those very images (the loader kept their order)
    model = resnetkit.load_checkpoint(cifar_run / "last.pt")
    with torch.no_grad():
        again = torch.softmax(model(normalize(seen["images"][expected], model.mean, model.std)), 1)
    assert again.argmax(1).tolist() == [r["pred"] for r in m["worst_errors"]]
    assert again.max(1).values.tolist() == pytest.approx([r["prob"] for r in m["worst_errors"]], abs=1e-4)
    assert [r["true"] for r in m["worst_errors"]] == seen["labels"][expected].tolist()
    # the gallery shows exactly those images, titled with their true and predicted labels
    assert len(seen["shown"]) == N
    for img, i in zip(seen["shown"], expected):
        assert torch.equal(img, seen["images"][i].permute(1, 2, 0))
    for title, r in zip(seen["titles"], m["worst_errors"]):
        assert title == f"true {r['true_label']}\npred {r['pred_label']} {r['prob']:.0%}"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["class", "accuracy", "precision", "recall", "F1", "support"]
    assert printed[1:11] == format_class_table(m)[1:]


def test_class_table_matches_the_confusion_matrix(cifar_run) -> None:
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
            assert t["precision"][c] is None and t["f1"][c] is None
    row = format_class_table(m)[1].split()
    assert row == [m["classes"][0], f"{m['per_class'][0]:.2%}", "-" if t["precision"][0] is None else
                   f"{t['precision'][0]:.2%}", f"{t['recall'][0]:.2%}",
                   "-" if t["f1"][0] is None else f"{t['f1'][0]:.3f}", str(t["support"][0])]
