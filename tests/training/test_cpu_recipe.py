"""The cpu-fast recipe resolves to its documented values; flags still override it."""

import pytest

from resnetkit.training.config import RECIPES, resolve_config


def test_cpu_fast_recipe_values():
    cfg = resolve_config("cpu-fast")
    assert (cfg.model, cfg.model_kwargs, cfg.epochs, cfg.batch_size) == ("resnet_cpu", {"whiten": True, "activation": "gelu"}, 10, 512)
    assert (cfg.lr, cfg.schedule, cfg.warmup_epochs) == (0.8, "linear", 0.3)
    assert (cfg.optimizer, cfg.muon_lr, cfg.muon_momentum) == ("muon", 0.2, 0.6)
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
