"""The plain-vs-residual study: commands, gradient recorder, plain flag, budget plan and verdict."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from resnetkit.cli import main
from resnetkit.models import create_model
from resnetkit.study.degradation import (
    check_depths,
    curves_from_history,
    degradation_verdict,
    model_spec,
    next_round_fits,
    study_config,
    take_subset,
)
from resnetkit.study.gradients import GradientRecorder, flow_summary, weight_layers

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions run several times faster on one thread on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# tiny but real runs: 64 synthetic 8x8 images, batch 16 -> 4 iterations per epoch
TINY = ["--data", "synthetic:64", "--image-size", "8", "--batch-size", "16"]


@pytest.fixture(scope="module")
def degradation(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, object]:
    out = tmp_path_factory.mktemp("degradation")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETKIT_CACHE", str(out / "cache"))
        rc = main(["study", "degradation", "--depths", "14", "8", "--epochs", "2", "--out", str(out), *TINY])
    return rc, json.loads((out / "degradation.json").read_text()), out


@pytest.fixture(scope="module")
def gradients(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, object]:
    out = tmp_path_factory.mktemp("gradients")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETKIT_CACHE", str(out / "cache"))
        rc = main(["study", "gradients", "resnet20", "--compare", "--steps", "3", "--record-every", "2",
                   "--out", str(out), *TINY])
    return rc, json.loads((out / "gradients.json").read_text()), out


# ------------------------------------------------------------------------------ degradation command
def test_degradation_command_writes_curves_for_every_network(degradation) -> None:
    rc, report, out = degradation
    assert rc == 0
    assert (out / "degradation.png").read_bytes()[:8] == PNG
    nets = report["networks"]
    assert [(n["name"], n["depth"], n["plain"]) for n in nets] == [
        ("plain-8", 8, True), ("ResNet-8", 8, False), ("plain-14", 14, True), ("ResNet-14", 14, False)]
    # option-A shortcuts add no parameters: plain and residual twins have the same count
    assert [n["params"] for n in nets] == [75_290, 75_290, 172_506, 172_506]
    assert report["recipe"]["iterations"] == 8 and report["recipe"]["iterations_per_epoch"] == 4
    assert report["recipe"]["lr"] == 0.1 * 16 / 128 and report["recipe"]["weight_decay"] == 1e-4
    for n in nets:
        c = n["curves"]
        assert c["iteration"] == [4, 8]
        assert all(0.0 <= e <= 1.0 for e in c["train_error"] + c["test_error"])
        assert n["final_train_error"] == c["train_error"][-1]
        assert n["final_running_train_error"] == c["running_train_error"][-1]
        assert report["train_eval_images"] == 64  # all 64 images: errors are multiples of 1/64
        assert all(abs(e * 64 - round(e * 64)) < 1e-6 for e in c["train_error"])
        assert math.isclose(n["final_test_error"], c["test_error"][-1], abs_tol=1e-9)
        assert n["seconds"] > 0
    v = report["verdict"]
    plain = {n["depth"]: n["final_train_error"] for n in nets if n["plain"]}
    res = {n["depth"]: n["final_train_error"] for n in nets if not n["plain"]}
    assert v["degradation_reproduced"] == (plain[14] > plain[8])
    assert v["residual_deeper_no_worse"] == (res[14] <= res[8])


def test_degradation_runs_use_the_study_recipe_and_plain_flag(degradation) -> None:
    _, report, out = degradation
    for n in report["networks"]:
        cfg = json.loads((out / "runs" / n["name"].lower() / "config.json").read_text())["config"]
        assert cfg["model"] == "resnet20"
        assert cfg["model_kwargs"] == {"layers": [(n["depth"] - 2) // 6] * 3, "plain": n["plain"]}
        assert (cfg["lr"], cfg["momentum"], cfg["nesterov"], cfg["weight_decay"]) == (0.1 * 16 / 128, 0.9, False, 1e-4)
        assert (cfg["label_smoothing"], cfg["crop_pad"], cfg["flip"], cfg["seed"]) == (0.0, 4, "random", 0)
        assert cfg["schedule"] == "step" and cfg["epochs"] == 2
        assert cfg["warmup_epochs"] == 1.0  # the first epoch (4 iterations), at most 200 iterations


@pytest.mark.parametrize("depth", [20, 14])
def test_zero_init_residual_zeroes_only_the_resnets_branches(depth: int) -> None:
    def last_norm_scales(plain: bool, zero: bool) -> torch.Tensor:
        cfg = study_config(depth, plain, "synthetic", epochs=1, steps_per_epoch=10, out=None, zero_init_residual=zero)
        assert cfg.model_kwargs.get("zero_init_residual", False) == (zero and not plain)
        net = create_model(cfg.model, **cfg.model_kwargs)
        return torch.cat([m.bn2.weight.detach() for m in net.modules() if hasattr(m, "bn2")])

    assert last_norm_scales(False, True).numel() == (16 + 32 + 64) * (depth - 2) // 6  # every block's bn2
    assert torch.count_nonzero(last_norm_scales(False, True)) == 0  # a ResNet starts as its shortcuts
    assert torch.equal(last_norm_scales(False, False), torch.ones_like(last_norm_scales(False, False)))
    # a zeroed plain net would output a constant; it keeps the paper's initialisation
    assert torch.equal(last_norm_scales(True, True), torch.ones_like(last_norm_scales(True, True)))


def test_zero_init_flag_reaches_the_resnet_runs_and_the_report(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "zero"
    assert main(["study", "degradation", "--depths", "8", "--epochs", "1", "--zero-init-residual",
                 "--out", str(out), *TINY]) == 0
    report = json.loads((out / "degradation.json").read_text())
    assert report["recipe"]["zero_init_residual"] is True and report["image_size"] == 8
    for n in report["networks"]:
        cfg = json.loads((out / "runs" / n["name"].lower() / "config.json").read_text())["config"]
        assert cfg["model_kwargs"].get("zero_init_residual", False) == (not n["plain"])


def test_degradation_refuses_to_overwrite_and_rejects_bad_depths(degradation, capsys) -> None:
    _, _, out = degradation
    assert main(["study", "degradation", "--depths", "8", "--out", str(out), *TINY]) == 2
    assert "already holds a degradation study" in capsys.readouterr().err
    assert main(["study", "degradation", "--depths", "8", "21", "--out", str(out / "x"), *TINY]) == 2
    assert "6n+2" in capsys.readouterr().err
    assert not (out / "x").exists()


def test_budget_rounds_continue_runs_exactly(degradation, tmp_path, caplog) -> None:
    """Rounds of resumed epochs give the very curves of straight training; a tiny budget stops early."""
    _, straight, _ = degradation
    rc = main(["study", "degradation", "--depths", "8", "--budget-minutes", "60", "--epochs", "2",
               "--out", str(tmp_path / "a"), *TINY])
    assert rc == 0
    rounds = json.loads((tmp_path / "a" / "degradation.json").read_text())
    assert rounds["recipe"]["epochs"] == 2 and rounds["budget"]["minutes"] == 60
    assert [n["curves"] for n in rounds["networks"]] == [n["curves"] for n in straight["networks"][:2]]
    assert main(["study", "degradation", "--depths", "8", "--budget-minutes", "0.001",
                 "--out", str(tmp_path / "b"), *TINY]) == 0
    short = json.loads((tmp_path / "b" / "degradation.json").read_text())
    assert short["recipe"]["epochs"] == 1  # the first round always runs, then the budget stops it
    assert short["recipe"]["planned_epochs"] == 1 and short["recipe"]["schedule_completed"]
    assert [n["curves"]["iteration"] for n in short["networks"]] == [[4], [4]]
    assert "over its budget" in caplog.text


def test_rounds_equal_one_straight_run_of_the_step_schedule(degradation, tmp_path) -> None:
    """The study's round-by-round ResNet-8 is, epoch for epoch, one uninterrupted fit() of 2 epochs
    with the paper's step schedule (lr / 10 at 50% and 75% of the 8 iterations)."""
    from resnetkit.data.prepare import prepare_data
    from resnetkit.study.degradation import study_config
    from resnetkit.training.trainer import fit

    _, report, out = degradation
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETKIT_CACHE", str(tmp_path / "cache"))
        ds = prepare_data("synthetic:64", image_size=8)
    cfg = study_config(8, False, "synthetic:64", epochs=2, steps_per_epoch=4, out=tmp_path / "straight",
                       batch_size=16, device="cpu")
    straight = fit(cfg, data=ds)
    rounds = json.loads((out / "runs" / "resnet-8" / "config.json").read_text())
    assert rounds["config"]["epochs"] == 2
    net = next(n for n in report["networks"] if n["name"] == "ResNet-8")
    assert net["curves"]["running_train_error"] == [1.0 - r["train_acc"] for r in straight.history]
    assert net["curves"]["test_error"] == pytest.approx([1.0 - r["test_acc"] for r in straight.history], abs=1e-12)
    assert report["recipe"]["planned_epochs"] == 2 and report["recipe"]["schedule_completed"]
    # the step schedule: epoch 1 ends at full lr, epoch 2 at lr/100 (its last 2 of 8 iterations)
    assert [r["lr"] for r in straight.history] == pytest.approx([0.0125, 0.0125 * 0.01])


# ------------------------------------------------------------------------------ gradients command
def test_gradients_command_compares_plain_and_residual(gradients) -> None:
    rc, report, out = gradients
    assert rc == 0
    assert (out / "gradients.png").read_bytes()[:8] == PNG
    plain, res = report["networks"]
    assert (plain["plain"], res["plain"]) == (True, False)
    assert plain["name"] == "resnet20 (plain)" and res["name"] == "resnet20 (residual)"
    for net in (plain, res):
        assert len(net["layers"]) == 20 and net["layers"][0] == "conv1" and net["layers"][-1] == "fc"
        assert net["layer_kind"] == ["conv"] * 19 + ["linear"]
        assert len(net["blocks"]) == 9
        assert [r["step"] for r in net["records"]] == [0, 2]
        # linear warmup over 200 iterations: step k runs at lr 0.1 * (k + 1) / 200
        assert [r["lr"] for r in net["records"]] == pytest.approx([0.0005, 0.0015])
        for r in net["records"]:
            assert len(r["grad_norm"]) == 20 and len(r["act_rms"]) == 9
            assert all(g > 0 and math.isfinite(g) for g in r["grad_norm"])
            assert all(a > 0 and math.isfinite(a) for a in r["act_rms"])
            assert math.isfinite(r["loss"])
        assert net["init"]["first_over_last"] == pytest.approx(
            net["records"][0]["grad_norm"][0] / net["records"][0]["grad_norm"][18])
    # same seed, same first batch, same initial weights: only the shortcuts differ
    # the same initial weights; the norms may differ in the last bit (threaded reductions)
    assert plain["records"][0]["weight_norm"] == pytest.approx(res["records"][0]["weight_norm"], rel=1e-12)
    assert plain["records"][0]["grad_norm"] != res["records"][0]["grad_norm"]


# ------------------------------------------------------------------------------ the recorder
def test_recorder_matches_hand_computed_gradients() -> None:
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 1, bias=False))
    w1 = [[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]
    w2 = [[2.0, -1.0]]
    x, t = [1.0, 0.5, -1.0], 0.5
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w1))
        net[1].weight.copy_(torch.tensor(w2))
    # by hand: h = W1 x, y = W2 h, L = (y - t)^2 / 2; dL/dW2 = e h^T, dL/dW1 = W2^T e x^T with e = y - t
    h = [sum(w * xi for w, xi in zip(row, x)) for row in w1]
    e = sum(w * hi for w, hi in zip(w2[0], h)) - t
    g2 = math.sqrt(sum((e * hi) ** 2 for hi in h))
    g1 = math.sqrt(sum((w2[0][i] * e * xj) ** 2 for i in range(2) for xj in x))
    assert (h, e) == ([2.0, -3.5], 7.0)
    with GradientRecorder(net, blocks=[("hidden", net[0])]) as rec:
        assert rec.layer_names == ["0", "1"]
        assert all(math.isnan(g) for g in rec.grad_norms())  # no backward yet
        loss = 0.5 * (net(torch.tensor([x])) - t).pow(2).sum()
        loss.backward()
        r = rec.record(0, note="init")
    assert r["grad_norm"] == pytest.approx([g1, g2], abs=1e-6)
    assert r["grad_norm"] == pytest.approx([math.sqrt(551.25), math.sqrt(796.25)], abs=1e-6)
    assert r["weight_norm"] == pytest.approx([math.sqrt(15.0), math.sqrt(5.0)], abs=1e-6)
    assert r["act_rms"] == pytest.approx([math.sqrt((2.0**2 + 3.5**2) / 2)], abs=1e-6)
    assert r["note"] == "init" and rec.records == [r]
    net(torch.zeros(1, 3))  # hooks are gone after the with block: the stored RMS is unchanged
    assert rec.activation_rms() == pytest.approx([math.sqrt(8.125)], abs=1e-6)


def test_weight_layers_follow_depth_and_skip_projection_shortcuts() -> None:
    names = [n for n, _ in weight_layers(create_model("resnet20", layers=(1, 1, 1), shortcut="B"))]
    assert names == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
                     "layer3.0.conv1", "layer3.0.conv2", "fc"]


def test_flow_summary_on_hand_made_norms() -> None:
    s = flow_summary({"grad_norm": [8.0, 4.0, 2.0, 1.0, 50.0], "act_rms": [1.0, 3.0]},
                     ["conv", "conv", "conv", "conv", "linear"])
    assert s["first_over_last"] == pytest.approx(8.0)
    assert s["per_layer_factor"] == pytest.approx(0.5)  # halves per layer towards the output
    assert (s["first_block_rms"], s["last_block_rms"]) == (1.0, 3.0)


# ------------------------------------------------------------------------------ plain flag
@pytest.mark.parametrize("depth", [8, 14, 56])
def test_plain_twin_has_no_shortcut(depth: int) -> None:
    """Zeroing each block's residual branch leaves relu(x) in a ResNet but 0 in its plain twin."""
    specs = {plain: model_spec(depth, plain) for plain in (True, False)}
    nets = {plain: create_model(name, **kw).eval() for plain, (name, kw) in specs.items()}
    for plain, net in nets.items():
        blocks = [m for m in net.modules() if hasattr(m, "residual_norms")]
        assert len(blocks) == 3 * ((depth - 2) // 6)
        assert all(b.plain == plain for b in blocks)
        block = net.layer1[0]
        with torch.no_grad():
            block.bn2.weight.zero_()
            block.bn2.bias.zero_()
            x = torch.randn(2, 16, 8, 8)
            y = block(x.clone())
        assert torch.equal(y, torch.zeros_like(x) if plain else x.relu())
    assert sum(p.numel() for p in nets[True].parameters()) == sum(p.numel() for p in nets[False].parameters())
    assert model_spec(56, True) == ("plain56", {}) and model_spec(14, True) == ("resnet20", {"layers": [2, 2, 2],
                                                                                              "plain": True})


def test_check_depths() -> None:
    assert check_depths([56, 20, 20]) == [20, 56]
    with pytest.raises(Exception, match="6n\\+2"):
        check_depths([20, 50, 51])


# ------------------------------------------------------------------------------ budget, subset, verdict
def test_next_round_must_fit_with_a_margin() -> None:
    assert next_round_fits(elapsed=100.0, last_round=50.0, budget=152.5)  # 100 + 1.05 x 50
    assert not next_round_fits(elapsed=100.0, last_round=50.0, budget=152.4)


def test_take_subset_is_seeded_and_sized() -> None:
    from resnetkit.data.dataset import ImageData

    imgs = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    data = ImageData("t", list("ab"), imgs, torch.arange(100) % 2, imgs[:40], torch.arange(40) % 2,
                     (0.5,) * 3, (0.2,) * 3, "fp")
    a, b = take_subset(data, 30, 10, seed=1), take_subset(data, 30, 10, seed=1)
    assert len(a.train_labels) == 30 and len(a.test_labels) == 10
    assert torch.equal(a.train_images, b.train_images)
    assert not torch.equal(a.train_images, take_subset(data, 30, 10, seed=2).train_images)
    assert a.train_labels.tolist() == (a.train_images[:, 0, 0, 0].long() % 2).tolist()  # labels follow images
    assert take_subset(data, None, None, 0) is data
    with pytest.raises(Exception, match="between 1 and the 100"):
        take_subset(data, 101, None, 0)


def _net(depth: int, plain: bool, train: float, test: float = 0.5) -> dict:
    return {"depth": depth, "plain": plain, "final_train_error": train, "final_test_error": test}


def test_verdict_reproduced() -> None:
    v = degradation_verdict([_net(20, True, 0.10), _net(56, True, 0.20), _net(20, False, 0.08),
                             _net(56, False, 0.05)])
    assert v["degradation_reproduced"] is True and v["residual_deeper_no_worse"] is True
    assert v["lines"][0] == ("plain-56 ends with higher training error than plain-20 (20.0% vs 10.0%): "
                             "degradation reproduced.")
    assert v["lines"][1].startswith("ResNet-56 ends at or below ResNet-20 in training error (5.0% vs 8.0%)")
    assert "At depth 56, ResNet vs plain final training error: 5.0% vs 20.0%" in v["text"]


def test_verdict_not_reproduced() -> None:
    v = degradation_verdict([_net(20, True, 0.30), _net(56, True, 0.25), _net(20, False, 0.10),
                             _net(56, False, 0.12)])
    assert v["degradation_reproduced"] is False and v["residual_deeper_no_worse"] is False
    assert "no higher training error than plain-20 (25.0% vs 30.0%): degradation not reproduced" in v["lines"][0]
    assert v["lines"][1].startswith("ResNet-56 ends above ResNet-20 in training error (12.0% vs 10.0%)")
    one = degradation_verdict([_net(20, True, 0.3), _net(20, False, 0.2)])
    assert one["degradation_reproduced"] is None and one["lines"][0].startswith("Only one depth")


def test_curves_from_history_marks_missing_test_points() -> None:
    rows = [{"step": 5, "train_acc": 0.25}, {"step": 10, "train_acc": 0.5, "test_acc": 0.4}]
    assert curves_from_history(rows) == {"iteration": [5, 10], "train_error": [0.75, 0.5],
                                         "running_train_error": [0.75, 0.5],
                                         "test_error": [None, pytest.approx(0.6)]}
    # measured training-set errors (eval mode) take the train_error slot; the running one stays
    c = curves_from_history(rows, [0.7, 0.3])
    assert c["train_error"] == [0.7, 0.3] and c["running_train_error"] == [0.75, 0.5]
    with pytest.raises(ValueError):
        curves_from_history(rows, [0.7])


def test_error_on_matches_the_checkpoints_own_predictions(degradation) -> None:
    """The eval-mode training error equals 1 - accuracy of the saved model's argmax, by hand."""
    from resnetkit.api import load_checkpoint
    from resnetkit.data.augment import normalize
    from resnetkit.study.degradation import error_on

    _, _, out = degradation
    ckpt = out / "runs" / "resnet-14" / "last.pt"
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (40,), generator=g)
    model = load_checkpoint(ckpt)
    with torch.no_grad():
        pred = model(normalize(x, model.mean, model.std)).argmax(1)
    expected = 1.0 - (pred == y).sum().item() / len(y)
    assert error_on(ckpt, x, y, device="cpu", precision="fp32", batch_size=16) == pytest.approx(expected, abs=1e-9)
