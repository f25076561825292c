"""The cpu-fast recipe resolves to its documented values; flags still override it."""

import pytest
import torch

from resnetkit.training.config import RECIPES, resolve_config


def test_cpu_fast_recipe_values():
    cfg = resolve_config("cpu-fast")
    assert (cfg.model, cfg.model_kwargs, cfg.epochs, cfg.batch_size) == ("resnet_cpu", {"whiten": True, "activation": "gelu"}, 10, 512)
    assert (cfg.lr, cfg.schedule, cfg.warmup_epochs) == (0.8, "linear", 0.3)
    assert (cfg.optimizer, cfg.muon_lr, cfg.muon_momentum, cfg.muon_ns_steps) == ("muon", 0.2, 0.6, 3)
    assert (cfg.brightness, cfg.contrast) == (0.14, 0.13)
    assert (cfg.label_smoothing, cfg.weight_decay) == (0.2, 5e-4)
    assert (cfg.crop_pad, cfg.crop_fill, cfg.flip, cfg.tta, cfg.eval_every) == (
        2, "reflect", "alternating", "flip-shift", 0)
    assert cfg.precision == "auto" and cfg.compile is False and cfg.recipe == "cpu-fast"
    assert "Jordan 2024" in RECIPES["cpu-fast"].doc


def test_cpu_fast_recipe_overrides():
    cfg = resolve_config("cpu-fast", epochs=3, batch_size=128, precision="fp32")
    assert (cfg.epochs, cfg.batch_size, cfg.precision, cfg.model) == (3, 128, "fp32", "resnet_cpu")


def test_recipe_model_options_follow_the_model():
    # another model does not get resnet_cpu's options; options given for resnet_cpu add to the recipe's
    assert resolve_config("cpu-fast", model="resnet20").model_kwargs == {}
    merged = resolve_config("cpu-fast", model_kwargs={"widths": [32, 64, 128]}).model_kwargs
    assert merged == {"whiten": True, "activation": "gelu", "widths": [32, 64, 128]}
    assert resolve_config("cpu-fast", model_kwargs={"whiten": False}).model_kwargs == {"whiten": False,
                                                                                      "activation": "gelu"}


def test_a_model_of_the_recipes_family_keeps_the_recipes_model_options():
    # resnet_cpu_fullres is resnet_cpu with a stride-1 stem: the recipe's whitening stem applies to it
    cfg = resolve_config("cpu-fast", model="resnet_cpu_fullres")
    assert (cfg.model, cfg.model_kwargs) == ("resnet_cpu_fullres", {"whiten": True, "activation": "gelu"})
    both = resolve_config("cpu-fast", model="resnet_cpu_fullres", model_kwargs={"stem_width": 32}).model_kwargs
    assert both == {"whiten": True, "activation": "gelu", "stem_width": 32}
    assert resolve_config("cpu-fast", model="resnet9").model_kwargs == {}  # another family: none of them
    assert resolve_config("cpu-fast", model="no_such_net").model_kwargs == {}  # reported when it is built


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_run_cannot_change_a_recipe(recipe):
    before = repr(RECIPES[recipe].values)
    cfg = resolve_config(recipe)
    cfg.model_kwargs["changed"] = 1
    assert repr(RECIPES[recipe].values) == before


def test_the_activation_flag_sets_the_networks_activation(tmp_path, capsys):
    import json

    import torch

    import resnetkit
    from resnetkit.cli import main

    args = ["train", "--recipe", "cpu-fast", "--data", "synthetic:64", "--max-steps", "1", "--precision", "fp32",
            "--no-report"]
    assert main([*args, "--activation", "relu", "--out", str(tmp_path / "relu")]) == 0
    cfg = json.loads((tmp_path / "relu" / "config.json").read_text())["config"]
    assert cfg["model_kwargs"] == {"whiten": True, "activation": "relu"}
    model = resnetkit.load_checkpoint(tmp_path / "relu" / "last.pt")
    assert not any(isinstance(m, torch.nn.GELU) for m in model.modules())
    assert main([*args, "--out", str(tmp_path / "gelu")]) == 0  # the recipe's own
    model = resnetkit.load_checkpoint(tmp_path / "gelu" / "last.pt")
    assert sum(isinstance(m, torch.nn.GELU) for m in model.modules()) == 6
    capsys.readouterr()
    # refused before any data is read: the data path does not exist, and the message is the option's
    assert main(["train", "--model", "resnet20", "--data", str(tmp_path / "missing"), "--max-steps", "1",
                 "--activation", "gelu", "--out", str(tmp_path / "r20")]) == 2
    err = capsys.readouterr().err
    assert "model 'resnet20' does not take --activation; its model options are " in err
    assert "zero_init_residual" in err and "missing" not in err
    assert not (tmp_path / "r20").exists()


def test_a_model_option_the_model_does_not_take_is_refused_by_name():
    from resnetkit.errors import UserError

    with pytest.raises(UserError, match=r"model 'resnet20' does not take activation, whiten; its model options are "
                                        r"in_channels, stem, "):
        resolve_config(model="resnet20", data="synthetic:8", model_kwargs={"activation": "gelu", "whiten": True})
    with pytest.raises(UserError, match="model 'resnet_cpu' does not take shortcut"):
        resolve_config(recipe="cpu-fast", data="synthetic:8", model_kwargs={"shortcut": "A"})
    assert resolve_config(model="resnet20", data="synthetic:8", model_kwargs={"shortcut": "B"}).model_kwargs == {
        "shortcut": "B"}


def test_the_budget_network_is_off_when_the_network_batch_or_muon_lr_is_given():
    recipe = resolve_config(recipe="cpu-fast", data="synthetic:8")
    assert recipe.budget_model == [
        {"model": "resnet_cpu_fullres_deep", "batch_size": 256, "muon_lr": 0.1, "min_epochs": 4.5},
        {"model": "resnet_cpu_fullres_narrow", "batch_size": 256, "muon_lr": 0.1, "min_epochs": 2.5}]
    for given in ({"model": "resnet_cpu"}, {"batch_size": 128}, {"muon_lr": 0.3}):
        assert resolve_config(recipe="cpu-fast", data="synthetic:8", **given).budget_model is None
    # the activation (a model option) keeps it: the option applies to either network
    assert resolve_config(recipe="cpu-fast", data="synthetic:8",
                          model_kwargs={"activation": "relu"}).budget_model == recipe.budget_model
    from resnetkit.errors import UserError

    with pytest.raises(UserError, match="budget_model"):
        resolve_config(recipe="cpu-fast", data="synthetic:8", budget_model={"model": "resnet_cpu_fullres"})
    with pytest.raises(UserError, match="budget_model"):
        resolve_config(recipe="cpu-fast", data="synthetic:8", budget_model=[recipe.budget_model[0], {"min_epochs": 1}])
    # one network alone is a list of one
    one = {"model": "resnet_cpu_fullres", "min_epochs": 3.0}
    assert resolve_config(recipe="cpu-fast", data="synthetic:8", budget_model=one).budget_model == [one]


@pytest.mark.parametrize("deep_epochs, narrow_epochs, trained", [
    (4.4, 2.4, "resnet_cpu"), (4.4, 2.6, "resnet_cpu_fullres_narrow"), (4.6, 8.0, "resnet_cpu_fullres_deep")])
def test_a_time_budget_trains_the_largest_network_it_buys_enough_epochs_of(tmp_path, monkeypatch, deep_epochs,
                                                                             narrow_epochs, trained):
    """The rates the precision probe measures decide: 4.5 epochs of the deep network, else 2.5 of the narrow one,
    else the recipe's own network."""
    import json

    from resnetkit import api
    from resnetkit.data.prepare import prepare_data
    from resnetkit.runtime import probe
    from resnetkit.training import setup

    n_train = len(prepare_data("synthetic:256").train_labels)
    budget = 2.0
    asked = []
    epochs = {"resnet_cpu_fullres_deep": deep_epochs, "resnet_cpu_fullres_narrow": narrow_epochs}

    def fake_decide(model_name, model_kwargs, batch_size, image_size, **kw):
        asked.append((model_name, batch_size))
        rate = epochs[model_name] * n_train / budget if model_name in epochs else 1e6
        return probe.ProbeDecision("fp32", False, [probe.ProbeRow("fp32", False, rate / 2, images_per_s=rate),
                                                   probe.ProbeRow("bf16", False, 1.0, dropped=True)])

    monkeypatch.setenv("RESNETKIT_PRECISION_PROBE", "on")
    monkeypatch.setattr(setup, "decide", fake_decide)
    monkeypatch.setattr(probe, "decide", fake_decide)
    out = tmp_path / "run"
    api.train(data="synthetic:256", recipe="cpu-fast", time_budget=budget, max_steps=1, out=out, report=False)
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["model"], cfg["budget_model"]) == (trained, None)
    # the larger networks' batch (256, capped to the small training set) and Muon lr (scaled with it), largest first,
    # each asked only while none was chosen
    small = 1 << ((n_train // 16).bit_length() - 1)
    probed = ["resnet_cpu_fullres_deep"] + (["resnet_cpu_fullres_narrow"] if trained != "resnet_cpu_fullres_deep"
                                           else [])
    assert asked[:len(probed)] == [(m, small) for m in probed]
    assert [m for m, _ in asked[len(probed):]] == [trained]  # then the precision probe of the network trained
    if trained != "resnet_cpu":
        assert (cfg["batch_size"], cfg["muon_lr"]) == (small, pytest.approx(0.1 * small / 256))
    else:
        assert (cfg["batch_size"], cfg["muon_lr"]) == (small, pytest.approx(0.2 * small / 512))
    # a run with the network given never asks
    asked.clear()
    api.train(data="synthetic:256", recipe="cpu-fast", model="resnet_cpu", time_budget=budget, max_steps=1,
              out=tmp_path / "given", report=False)
    assert [m for m, _ in asked] == ["resnet_cpu"]  # only the precision probe of the network given


def test_the_stem_stops_training_after_stem_epochs_and_a_resume_freezes_it_too(tmp_path):
    """Epoch 1 trains the stem's BatchNorm; from epoch 2 on it stays as it was, also across a resume mid-run."""
    from resnetkit import api
    from resnetkit.checkpoint import peek

    opts = dict(data="synthetic:256", recipe="cpu-fast", epochs=3, stem_epochs=1, precision="fp32", batch_size=32,
                report=False)
    whole = api.train(out=tmp_path / "whole", **opts)
    steps = whole.history[0]["step"]  # steps in one epoch
    api.train(out=tmp_path / "init", max_steps=1, **{**opts, "stem_epochs": 0})  # frozen from the start
    first = peek(tmp_path / "init" / "last.pt")["model"]
    api.train(out=tmp_path / "part", stop_after_steps=steps + 2, **opts)  # two steps into epoch 2
    after_one = peek(tmp_path / "part" / "last.pt")["model"]
    api.resume(tmp_path / "part", report=False)
    final = peek(tmp_path / "whole" / "last.pt")["model"]
    resumed = peek(tmp_path / "part" / "last.pt")["model"]
    for name in ("stem.1.weight", "stem.1.bias"):
        assert torch.equal(first[name], torch.ones_like(first[name]) if name.endswith("weight") else
                           torch.zeros_like(first[name]))  # stem_epochs=0: never trained
        assert not torch.equal(after_one[name], first[name])  # epoch 1 trained it
        assert torch.equal(final[name], after_one[name]) and torch.equal(resumed[name], after_one[name])
    assert not torch.equal(final["fc.weight"], after_one["fc.weight"])  # the rest went on learning
    assert all(torch.equal(final[k], resumed[k]) for k in final)  # and the resumed run ends bit for bit the same


def test_stem_epochs_belongs_to_the_resnet_cpu_networks():
    from resnetkit.errors import UserError

    with pytest.raises(UserError, match="stem_epochs"):
        resolve_config(model="resnet20", data="synthetic:8", stem_epochs=1)
    with pytest.raises(UserError, match="stem_epochs"):
        resolve_config(recipe="cpu-fast", data="synthetic:8", stem_epochs=-1)
    assert resolve_config(recipe="cpu-fast", data="synthetic:8", model="resnet20").stem_epochs is None
