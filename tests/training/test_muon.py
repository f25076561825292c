"""--optimizer muon: the Newton-Schulz orthogonalisation, the SGD half against torch's SGD, the
split of parameters, exact resume and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import resnetkit
from resnetkit.checkpoint import peek
from resnetkit.cli import main
from resnetkit.errors import UserError
from resnetkit.models import create_model
from resnetkit.training.config import resolve_config
from resnetkit.training.muon import MuonSGD, muon_filters, orthogonalize
from resnetkit.training.optim import build_optimizer
from resnetkit.training.resume import resume_changes


@pytest.mark.parametrize("shape", [(64, 216), (256, 1152), (300, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalize_pushes_every_singular_value_near_one(shape: tuple[int, int], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    k = min(shape)
    u = torch.linalg.qr(torch.randn(shape[0], k, generator=g))[0]
    v = torch.linalg.qr(torch.randn(shape[1], k, generator=g))[0]
    m = u @ torch.diag(torch.logspace(0, 1.5, k)) @ v.T * 7.0  # singular values 7 to 221: condition 32
    s = torch.linalg.svdvals(orthogonalize(m, dtype=dtype).float())
    assert len(s) == k
    assert s.min() > 0.6 and s.max() < 1.25, (s.min().item(), s.max().item())
    # the same matrix after 1 step is far from orthogonal: the 5 steps are what does it
    one = torch.linalg.svdvals(orthogonalize(m, steps=1))
    assert one.min() < 0.3


def test_orthogonalize_keeps_the_directions_of_a_low_rank_matrix() -> None:
    u, v = torch.randn(40, 1), torch.randn(90, 1)
    o = orthogonalize(u @ v.T * 5.0)
    cos = torch.nn.functional.cosine_similarity(o.flatten(), (u @ v.T).flatten(), dim=0)
    assert cos > 0.999 and math.isclose(torch.linalg.matrix_norm(o, 2).item(), 1.0, abs_tol=0.35)  # the iteration leaves 0.7-1.2


def test_the_sgd_groups_step_exactly_as_torch_sgd() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    ours = MuonSGD([{"params": list(a.parameters()), "weight_decay": 5e-4}], lr=0.1, momentum=0.9, nesterov=True)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for _ in range(4):
        x = torch.randn(16, 8)
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_a_muon_step_is_the_orthogonalised_nesterov_momentum_on_rescaled_filters() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(16, 8, 3, 3) * 3.0)
    opt = MuonSGD([{"params": [w], "muon": True, "momentum": 0.6}], lr=0.05)
    grads = [torch.randn_like(w) for _ in range(2)]
    expected = w.detach().clone()
    buf = torch.zeros_like(w)
    for grad in grads:
        w.grad = grad.clone()
        opt.step()
        buf = 0.6 * buf + grad
        expected = expected * (4.0 / expected.norm())  # sqrt(16 rows): unit rows on average
        expected = expected - 0.05 * orthogonalize((grad + 0.6 * buf).reshape(16, -1)).view_as(w)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(opt.state[w]["momentum_buffer"], buf)


def test_the_newton_schulz_steps_reach_the_muon_groups_and_their_updates() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_cpu", num_classes=10, whiten=True)
    opt = build_optimizer(model, resolve_config("cpu-fast", data="synthetic", muon_ns_steps=3), "fp32")
    assert [g["ns_steps"] for g in opt.param_groups if g["muon"]] == [3]
    w = nn.Parameter(torch.randn(16, 8, 3, 3))
    updates = {}
    for steps in (3, 5):
        p = nn.Parameter(w.detach().clone())
        p.grad = torch.ones_like(p).cumsum(0).sin()
        MuonSGD([{"params": [p], "muon": True, "momentum": 0.0, "ns_steps": steps}], lr=1.0, nesterov=False).step()
        updates[steps] = w.detach() * (4.0 / w.norm()) - p.detach()
        expected = orthogonalize(p.grad.reshape(16, -1), steps).view_as(p)
        torch.testing.assert_close(updates[steps], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(updates[3], updates[5], atol=1e-3)


def test_muon_takes_the_filters_and_sgd_the_rest() -> None:
    model = create_model("resnet_cpu", num_classes=10, whiten=True)
    cfg = resolve_config("cpu-fast", data="synthetic", optimizer="muon", muon_lr=0.07, backbone_lr_mult=0.5)
    opt = build_optimizer(model, cfg, "bf16")
    assert isinstance(opt, MuonSGD) and opt.ns_dtype == torch.bfloat16
    filters = [p for p in model.parameters() if p.ndim == 4 and p.requires_grad]
    muon = [p for g in opt.param_groups if g["muon"] for p in g["params"]]
    assert {id(p) for p in muon} == {id(p) for p in filters} == muon_filters(model) - {id(model.stem[0].weight)}
    assert len(filters) == 5  # 3 stages + the residual pair; the frozen whitening stem is not trained
    for g in opt.param_groups:
        if g["muon"]:
            assert (g["initial_lr"], g["momentum"], g["weight_decay"]) == (0.035, 0.6, 0.0)  # lr x backbone mult
        else:
            assert g["momentum"] == 0.9 and g["initial_lr"] in (0.8, 0.4)
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable
    assert build_optimizer(model, cfg, "fp32").ns_dtype == torch.float32
    assert type(build_optimizer(model, resolve_config("cpu-fast", data="synthetic", optimizer="sgd"))) is torch.optim.SGD


@pytest.mark.parametrize("bad", [{"optimizer": "adam"}, {"muon_lr": 0.0}, {"muon_momentum": 1.0}, {"muon_ns_steps": 0},
                                 {"muon_ns_steps": 2.5}])
def test_bad_muon_settings_are_refused(bad: dict) -> None:
    with pytest.raises(UserError):
        resolve_config("cpu-fast", data="synthetic", **bad)


MUON_RUN = dict(model="resnet_cpu", recipe="cpu-fast", data="synthetic:256", batch_size=32, epochs=2, seed=1,
                device="cpu", precision="fp32", optimizer="muon", eval_every=0, tta=False, progress=False)


def test_a_muon_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    whole = resnetkit.train(**MUON_RUN, out=str(tmp_path / "whole"))
    resnetkit.train(**MUON_RUN, out=str(tmp_path / "half"), stop_after_steps=11)  # mid-epoch 2
    resumed = resnetkit.resume(tmp_path / "half", progress=False)
    a, b = peek(tmp_path / "whole" / "last.pt"), peek(tmp_path / "half" / "last.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert resumed.test_top1 == whole.test_top1
    groups = a["optimizer"]["param_groups"]
    assert [g["muon"] for g in groups].count(True) >= 1 and a["config"]["optimizer"] == "muon"


def test_the_command_line_trains_with_muon(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(["train", "--recipe", "cpu-fast", "--data", "synthetic:128", "--epochs", "1", "--batch-size", "32",
                 "--optimizer", "muon", "--muon-lr", "0.05", "--muon-momentum", "0.7", "--muon-ns-steps", "3",
                 "--precision", "fp32", "--out", str(out)])
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["optimizer"], cfg["muon_lr"], cfg["muon_momentum"], cfg["muon_ns_steps"]) == ("muon", 0.05, 0.7, 3)
    groups = peek(out / "last.pt")["optimizer"]["param_groups"]
    assert {g["ns_steps"] for g in groups if g["muon"]} == {3}
    with pytest.raises(SystemExit) as e:
        main(["train", "--recipe", "cpu-fast", "--data", "synthetic:128", "--optimizer", "adam"])
    assert e.value.code == 2
    assert "invalid choice: 'adam'" in capsys.readouterr().err


def test_a_batch_capped_for_a_small_training_set_scales_muons_lr_too(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        result = resnetkit.train(model="resnet_cpu", recipe="cpu-fast", data="synthetic:256", max_steps=1,
                                 device="cpu", precision="fp32", progress=False, out=str(tmp_path / "a"))
    cfg = result.config
    assert cfg["batch_size"] < 512 and cfg["optimizer"] == "muon"
    assert math.isclose(cfg["muon_lr"], 0.2 * cfg["batch_size"] / 512)
    assert math.isclose(cfg["lr"], 0.8 * cfg["batch_size"] / 512)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch ")]
    assert f"Muon lr {cfg['muon_lr']:.4g} from 0.2" in line  # the log names every rate it changed
    kept = resnetkit.train(model="resnet_cpu", recipe="cpu-fast", data="synthetic:256", max_steps=1, batch_size=64,
                           device="cpu", precision="fp32", progress=False, out=str(tmp_path / "b"))
    assert (kept.config["batch_size"], kept.config["muon_lr"], kept.config["lr"]) == (64, 0.2, 0.8)  # given: kept


def test_a_checkpoint_from_before_the_option_resumes_as_sgd(tmp_path: Path) -> None:
    saved = {"lr": 0.1, "batch_size": 128}  # a config written before --optimizer existed
    assert resume_changes(saved, {"optimizer": "sgd", "lr": 0.1}, tmp_path) == {}
    with pytest.raises(UserError, match="--optimizer is 'sgd' in the checkpoint but 'muon' was given"):
        resume_changes(saved, {"optimizer": "muon"}, tmp_path)


def test_muon_settings_without_muon_are_refused_not_ignored() -> None:
    with pytest.raises(UserError, match="only apply with .*optimizer.*muon.*trains with sgd"):
        resolve_config("default", data="synthetic", muon_lr=0.05)
    with pytest.raises(UserError, match="muon_momentum"):
        resolve_config("cpu-fast", data="synthetic", optimizer="sgd", muon_momentum=0.5)
    with pytest.raises(UserError, match="muon_ns_steps"):
        resolve_config("cpu-fast", data="synthetic", optimizer="sgd", muon_ns_steps=3)
    assert resolve_config("cpu-fast", data="synthetic", muon_lr=0.05).muon_lr == 0.05  # the recipe's optimizer is Muon
