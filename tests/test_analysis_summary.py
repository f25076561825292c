"""Model summaries (per-stage shapes, parameters, FLOPs) and the model table."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torchvision.models import get_model_weights

from resnetkit import analysis
from resnetkit.analysis import meta_model, model_table, summarize
from resnetkit.models import create_model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """CPU counts run single-threaded: predictable on a small shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)




def test_resnet50_is_8_2_gflops_at_224() -> None:
    # FlopCounterMode counts a multiply-add as 2 FLOPs: 4.1 GMACs (He et al. 2015, Table 1)
    s = summarize(meta_model("resnet50"))
    assert s.input_size == (3, 224, 224)
    assert s.gflops == pytest.approx(8.18, abs=0.01)
    assert s.gmacs == pytest.approx(4.09, abs=0.005)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_macs_match_torchvision_metadata(name: str) -> None:
    # torchvision's "_ops" is GMACs at 224x224, rounded to 3 decimals
    expected = get_model_weights(name).DEFAULT.meta["_ops"]
    assert summarize(meta_model(name)).gmacs == pytest.approx(expected, abs=0.0015)


def test_resnet18_cifar_rows_add_up_and_match_hand_counts() -> None:
    s = summarize(create_model("resnet18_cifar"))
    assert [r.name for r in s.stages] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [r.output_shape for r in s.stages] == [
        (64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (10,)]
    assert s.total_params == s.trainable_params == 11_173_962
    assert sum(r.params for r in s.stages) == s.total_params
    assert sum(r.flops for r in s.stages) == s.total_flops
    by = {r.name: r for r in s.stages}
    # stem: 3x3 conv 3->64 at 32x32, 2 FLOPs per multiply-add; BN 2*64 parameters
    assert by["stem"].flops == 2 * 3 * 64 * 9 * 32 * 32
    assert by["stem"].params == 3 * 64 * 9 + 2 * 64
    # layer1: four 3x3 convs 64->64 at 32x32
    assert by["layer1"].flops == 4 * 2 * 64 * 64 * 9 * 32 * 32
    # head: linear 512 -> 10
    assert by["head"].flops == 2 * 512 * 10
    assert by["head"].params == 512 * 10 + 10


def test_paper_net_has_three_stages() -> None:
    s = summarize(create_model("resnet20"))
    assert [r.name for r in s.stages] == ["stem", "layer1", "layer2", "layer3", "head"]
    assert s.stages[3].output_shape == (64, 8, 8)
    assert s.total_params == 269_722


def test_input_size_scales_conv_flops() -> None:
    model = meta_model("resnet18_cifar")
    small = summarize(model)
    big = summarize(model, (3, 64, 64))
    head = small.stages[-1].flops
    assert big.stages[-1].flops == head  # the classifier sees pooled features either way
    assert big.total_flops - head == 4 * (small.total_flops - head)
    assert big.stages[4].output_shape == (512, 8, 8)


def test_trainable_params_and_training_mode_are_respected() -> None:
    model = create_model("resnet20").train()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    s = summarize(model)
    layer1 = sum(p.numel() for p in model.layer1.parameters())
    assert s.trainable_params == s.total_params - layer1 == 269_722 - 14_016
    assert model.training  # restored after the eval-mode count


def test_meta_and_cpu_give_the_same_summary() -> None:
    assert summarize(meta_model("preact_resnet18")) == summarize(create_model("preact_resnet18"))


def test_model_without_stages_gets_one_row_per_child() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    s = summarize(model, (1, 8, 8))
    assert [r.name for r in s.stages] == ["0", "1", "2", "3"]
    assert s.stages[0].flops == 2 * 1 * 4 * 9 * 36 and s.stages[3].flops == 2 * 144 * 5
    assert s.stages[3].output_shape == (5,)


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        summarize(meta_model("resnet20"), (1, 32, 32))


def test_model_table_rows_and_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = model_table("resnet18*")
    assert [r["name"] for r in rows] == ["resnet18", "resnet18_cifar"]
    r18, r18c = rows
    assert (r18["family"], r18["params"], r18["input_size"]) == ("resnet", 11_689_512, (3, 224, 224))
    assert r18["gflops"] == pytest.approx(3.628, abs=0.001)
    assert (r18c["params"], r18c["input_size"]) == (11_173_962, (3, 32, 32))
    assert r18c["gflops"] == pytest.approx(1.111, abs=0.001)
    path = analysis._table_cache_path()
    assert len(json.loads(path.read_text())) == 2

    def no_compute(name: str) -> dict:
        raise AssertionError(f"{name} should come from the cache")

    monkeypatch.setattr(analysis, "model_row", no_compute)
    assert model_table("resnet18*") == rows

    # editing a model source (or upgrading torch or resnetkit) invalidates the cached rows
    recomputed = []
    monkeypatch.setattr(analysis, "model_row", lambda name: recomputed.append(name) or
                        {**rows[0], "name": name})
    monkeypatch.setattr(analysis, "_source_fingerprint", lambda: "edited")
    model_table("resnet18*")
    assert recomputed == ["resnet18", "resnet18_cifar"]


def test_model_table_survives_a_corrupt_cache() -> None:
    path = analysis._table_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    rows = model_table("resnet20")
    assert [(r["name"], r["params"]) for r in rows] == [("resnet20", 269_722)]
    assert rows[0]["gflops"] == pytest.approx(0.0811, abs=0.0001)  # 40.6 MMACs
    assert json.loads(path.read_text())  # rewritten


def test_model_table_without_cache_writes_nothing() -> None:
    rows = model_table("resnet20", cache=False)
    assert rows[0]["params"] == 269_722
    assert not analysis._table_cache_path().exists()


def test_meta_model_allocates_nothing_and_keeps_real_init_intact() -> None:
    model = meta_model("wide_resnet101_2", num_classes=10)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 126_886_696 - 2049 * 990
    assert model.spec == {"name": "wide_resnet101_2", "kwargs": {"num_classes": 10}}
    # the init-skipping mode only ever touches meta tensors
    with analysis._SkipMetaInit():
        torch.manual_seed(0)
        real = create_model("resnet20")
    assert real.conv1.weight.std() > 0.1 and torch.equal(real.bn1.weight, torch.ones(16))
