"""The degradation study's plan: how many one-epoch rounds fit a budget, and whether that is enough.

The study trains every network in rounds of one epoch. Under ``--budget-minutes`` the number of
rounds is fixed after the first one, from its duration (:func:`rounds_that_fit`); a round starts
only if its predecessor's duration still fits (:func:`next_round_fits`).

With the paper's initialisation a deep ResNet learns more slowly per iteration at the start than
a shallow one, so "ResNet-56 at or below ResNet-20" needs iterations. On the JPEG CIFAR-10
archive with ``--subset 2500 --test-subset 1000 --batch-size 64`` and seed 0:

* 2,730 iterations per network (70 epochs; a 2-core Intel Xeon with AMX, bf16, 1,614 s of study):
  ResNet-56 ended at 7.4% training error against ResNet-20's 9.1%, and plain-56 at 66.8% against
  plain-20's 13.4%: both halves of He et al. 2015, Figure 6.
* 702 iterations (a 2-core AMD EPYC with AVX2, fp32, 30 minutes): ResNet-56 50.6% vs ResNet-20 43.0%.
* Other runs of the same recipe outside the study (2 cores, fp32) agreed: ResNet-56
  ended above ResNet-20 after 585 iterations (16 px, 2,500 images) and 1,260 (32 px, 500 images;
  0.2% vs 0.0%), and after 3,000 at 16 px on 1,000 images (15.6% vs 2.2%).

So at this setting (32 px, 2,500 images) the line lies between 702 and 2,730 iterations;
:data:`PAPER_INIT_MIN_ITERATIONS` puts it a little below the run that reproduced both halves. It is
a guide, not a guarantee: the 16 px run on 1,000 images shows that other data sizes move it, and
deeper pairs than 20/56 were not measured. Zero-initialised residual branches
(Goyal et al. 2017) showed the deeper ResNet at or below the shallower one after 1,209 and 1,326
iterations (two seeds, 2 cores of an Intel Xeon with AVX-512, fp32).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

ROUND_MARGIN = 1.05  # a new round must fit even if it runs 5 % slower than the last one
UNPLANNED_EPOCHS = 10**6  # the schedule's length during a budgeted study's first round (full lr throughout)
#: Iterations per network below which, with the paper's initialisation, the deeper ResNet is not
#: expected to catch up with the shallower one (see the module docstring for the measurements).
PAPER_INIT_MIN_ITERATIONS = 2500


def rounds_that_fit(elapsed: float, round_seconds: float, budget: float) -> int:
    """How many more rounds of ``round_seconds`` (with :data:`ROUND_MARGIN`) fit after ``elapsed``."""
    return max(0, int((budget - elapsed) // (ROUND_MARGIN * max(round_seconds, 1e-9))))


def next_round_fits(elapsed: float, last_round: float, budget: float) -> bool:
    """Whether one more round (each run one epoch longer) fits in the budget, all in seconds."""
    return elapsed + ROUND_MARGIN * last_round <= budget


@dataclass(frozen=True)
class StudyPlan:
    """The planned epochs of a study and, when they are too few for the paper's initialisation, why.

    ``warning`` says what the plan means and ``advice`` names the ways out; both are ``None`` when
    the plan reaches ``min_iterations``, uses zero-initialised branches or has one depth only.
    ``first_round`` is the first round's duration and ``budget_minutes_needed`` the budget that
    would reach ``min_iterations`` at that rate, both ``None`` without a budget.
    """

    epochs: int
    iterations: int
    min_iterations: int
    epochs_needed: int
    first_round: float | None = None
    budget_minutes_needed: float | None = None
    warning: str | None = None
    advice: str | None = None

    @property
    def warned(self) -> bool:
        return self.warning is not None


def plan_study(steps_per_epoch: int, *, cap: int | None, budget_s: float | None = None, elapsed: float = 0.0,
               first_round: float = 0.0, zero_init_residual: bool = False, n_depths: int = 2,
               min_iterations: int | None = None) -> StudyPlan:
    """The number of epochs per network and the budget warning.

    Without ``budget_s`` the plan is ``cap`` epochs (known before training). With it, the plan
    is the first round plus the rounds that fit after ``elapsed`` seconds at ``first_round``
    seconds each, at most ``cap``. ``min_iterations`` defaults to :data:`PAPER_INIT_MIN_ITERATIONS`.
    """
    need = PAPER_INIT_MIN_ITERATIONS if min_iterations is None else int(min_iterations)
    if budget_s is None:
        epochs = int(cap) if cap is not None else UNPLANNED_EPOCHS
    else:
        epochs = 1 + rounds_that_fit(elapsed, first_round, budget_s)
        epochs = min(epochs, cap) if cap is not None else epochs
    epochs_needed = max(1, math.ceil(need / steps_per_epoch))
    minutes = None
    if budget_s is not None:
        minutes = (elapsed + (epochs_needed - 1) * ROUND_MARGIN * first_round) / 60
    plan = StudyPlan(epochs, epochs * steps_per_epoch, need, epochs_needed,
                     None if budget_s is None else first_round, minutes)
    if plan.iterations >= need or zero_init_residual or n_depths < 2:
        return plan
    warning = (f"{plan.iterations:,} iterations per network are fewer than the {need:,} that ResNet-56 needed "
               "to catch up with ResNet-20 on CIFAR-10 with the paper's initialisation: expect the deeper "
               "ResNet to end above the shallower one.")
    ways = []
    if minutes is not None and (cap is None or cap >= epochs_needed):
        ways.append(f"--budget-minutes {math.ceil(minutes)} ({epochs_needed * steps_per_epoch:,} iterations at "
                    f"the first round's {first_round:.0f} s for one epoch of all {2 * n_depths} networks; the paper's "
                    "experiment, longer)")
    else:
        budget = "" if minutes is None else f" with --budget-minutes {math.ceil(minutes)}"
        ways.append(f"--epochs {epochs_needed}{budget} (the paper's experiment, longer)")
    ways.append("--zero-init-residual (the ResNets' branches start at zero, Goyal et al. 2017: ResNet-56 caught up "
                "within 1,209-1,326 iterations, but the initialisation is no longer the paper's)")
    return dataclasses.replace(plan, warning=warning, advice="Ways out: " + " or ".join(ways) + ".")
