"""Atomic checkpoint writes: a write that fails at any point (disk full, I/O error, read-only
directory, Ctrl-C) leaves the previous file loadable and byte-identical, and no temp file; at the
run level a full disk stops training with one clear error and the last checkpoint intact."""

from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.checkpoint import CheckpointError, atomic_save, peek, safe_load
from resnetkit.errors import UserError
from resnetkit.training import rundir

from ._helpers import BASE, differing, step_losses, weights

REAL_SAVE = torch.save


def torn_save(nbytes: int = 1000, err: int = errno.ENOSPC):
    """A torch.save that writes ``nbytes`` of a real checkpoint, then fails like a full disk."""
    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        REAL_SAVE(obj, buf)
        f.write(buf.getvalue()[:nbytes])
        raise OSError(err, os.strerror(err))
    return save


def raising(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


FAULTS = {  # where the write fails -> (what to patch, replacement, words the error must contain)
    "disk full mid-write": (torch, "save", torn_save(), "No space left on device"),
    "I/O error at fsync": (os, "fsync", raising(OSError(errno.EIO, "Input/output error")), "Input/output error"),
    "read-only dir at rename": (os, "replace", raising(PermissionError(errno.EACCES, "Permission denied")),
                                "Permission denied"),
    "read-only file system": (tempfile, "mkstemp", raising(OSError(errno.EROFS, "Read-only file system")),
                              "Read-only file system"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      fault: str) -> None:
    target = tmp_path / "last.pt"
    old = {"model": {"w": torch.arange(1000, dtype=torch.float32)}, "global_step": 7}
    atomic_save(old, target)
    before = target.read_bytes()
    where, name, fake, words = FAULTS[fault]
    monkeypatch.setattr(where, name, fake)
    with pytest.raises(CheckpointError) as info:
        atomic_save({"model": {"w": torch.zeros(1000)}, "global_step": 8}, target)
    monkeypatch.undo()
    assert isinstance(info.value, UserError)
    assert str(info.value) == f"could not write checkpoint {target}: {words}"
    assert target.read_bytes() == before
    assert safe_load(target)["global_step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_ctrl_c_during_a_write_is_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.pt"
    atomic_save({"step": 1}, target)
    before = target.read_bytes()

    def interrupted(obj, f, *a, **k):
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 2}, target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]


def test_disk_full_during_a_run_stops_it_with_the_last_checkpoint_intact(
        reference: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    kept: dict = {}

    def save(obj, f, *args, **kwargs):
        if obj.get("global_step") == 9:  # the checkpoint after step 9 (checkpoint_every=3) hits a full disk
            kept["bytes"] = (out / "last.pt").read_bytes()
            return torn_save(5000)(obj, f)
        return REAL_SAVE(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError) as info:
        resnetkit.train(**BASE, checkpoint_every=3, out=str(out))
    monkeypatch.undo()
    assert str(info.value) == f"could not write checkpoint {out / 'last.pt'}: No space left on device"
    assert (out / "last.pt").read_bytes() == kept["bytes"]
    assert peek(out / "last.pt")["global_step"] == 8  # the end-of-epoch-1 checkpoint
    assert [s for s, _ in step_losses(out)] == list(range(9))  # it stopped at step 9: nothing trained after
    assert [p.name for p in out.glob(".*")] == []
    resnetkit.resume(out)  # space is back: the run finishes as if nothing had happened
    assert step_losses(out) == step_losses(reference["run"])
    assert differing(weights(out / "last.pt"), weights(reference["run"] / "last.pt")) == []


def test_disk_full_while_logging_metrics_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        if Path(path).name == "metrics.jsonl" and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", full_open, raising=False)  # the module's appends only
    with pytest.raises(UserError) as info:
        resnetkit.train(**{**BASE, "epochs": 1}, out=str(out))
    assert str(info.value) == f"could not write {out / 'metrics.jsonl'}: No space left on device"
    assert not (out / "last.pt").exists()  # stopped before writing a checkpoint for that epoch
