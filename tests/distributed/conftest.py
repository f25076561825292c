"""The 2-rank reference run that several distributed tests compare against (started once)."""

from __future__ import annotations

import pytest
from ddp_helpers import EPOCHS, TRAIN_ARGS, Reference, check, rank_env, run, torchrun


@pytest.fixture(scope="session")
def ddp_reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    tmp = tmp_path_factory.mktemp("ddp-reference")
    args = [*TRAIN_ARGS, "--epochs", str(EPOCHS)]
    check(run(torchrun(["train", *args, "--out", str(tmp / "run")]), rank_env(tmp, dump=tmp / "dump"), tmp))
    return Reference(tmp / "run", tmp / "dump", args)
