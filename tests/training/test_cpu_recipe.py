"""The cpu-fast recipe resolves to its documented values; flags still override it."""

from resnetkit.training.config import RECIPES, resolve_config


def test_cpu_fast_recipe_values():
    cfg = resolve_config("cpu-fast")
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.lr) == ("resnet_cpu", 10, 256, 0.2)
    assert (cfg.schedule, cfg.warmup_epochs, cfg.label_smoothing, cfg.weight_decay) == ("linear", 1, 0.2, 5e-4)
    assert (cfg.crop_pad, cfg.crop_fill, cfg.flip, cfg.tta, cfg.eval_every) == (2, "reflect", "alternating", True, 0)
    assert cfg.precision == "auto" and cfg.compile is False and cfg.recipe == "cpu-fast"
    assert "Jordan 2024" in RECIPES["cpu-fast"].doc


def test_cpu_fast_recipe_overrides():
    cfg = resolve_config("cpu-fast", epochs=3, batch_size=128, precision="fp32")
    assert (cfg.epochs, cfg.batch_size, cfg.precision, cfg.model) == (3, 128, "fp32", "resnet_cpu")
