"""Helpers of the first-hour tests: small image folders cut from the real JPEG CIFAR-10 archive,
and a small checkpoint whose logits are large (as a trained model's can be)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import torch

from resnetkit.models import create_model

CLASSES3 = ["airplane", "cat", "ship"]
CLASSES5 = ["airplane", "automobile", "bird", "cat", "deer"]


def extract_folder(archive: Path, dest: Path, classes: list[str], n_train: int, n_test: int | None) -> Path:
    """``dest/train/<class>/`` (and ``dest/test/<class>/`` unless ``n_test`` is None) from the archive.

    Takes the first ``n_train`` / ``n_test`` files of each class in archive order (deterministic).
    """
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 4 or parts[2] not in classes:
                continue
            split, cls = parts[1], parts[2]
            limit = n_train if split == "train" else n_test
            if limit is None or counts.get((split, cls), 0) >= limit:
                continue
            counts[(split, cls)] = counts.get((split, cls), 0) + 1
            target = dest / split / cls / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tf.extractfile(m).read())
    return dest




def save_checkpoint(path: Path, logit_scale: float = 1.0, classes: list[str] = CLASSES3,
                    image_size: int = 32) -> Path:
    """A resnetkit checkpoint of a half-width ResNet-20 whose classifier is scaled by ``logit_scale``.

    The old export check (absolute 1e-4) refused such a model once its logits reached ~1e3.
    """
    from resnetkit.checkpoint import FORMAT, FORMAT_VERSION, atomic_save

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=len(classes), width_mult=0.5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        model.fc.weight.mul_(logit_scale)
        model.fc.bias.mul_(logit_scale)
    atomic_save({"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.state_dict(),
                 "model_name": "resnet20", "model_kwargs": dict(model.spec["kwargs"]), "optimizer": {},
                 "epoch": 1, "step_in_epoch": 0, "global_step": 1, "rng": {}, "best": {}, "history": [],
                 "config": {"model": "resnet20"}, "classes": list(classes), "mean": [0.49, 0.48, 0.45],
                 "std": [0.25, 0.24, 0.26], "image_size": image_size, "in_channels": 3,
                 "data_fingerprint": "", "world_size": 1, "versions": {}}, path)
    return path
