"""Why residuals work, measured: the plain-vs-residual degradation study and gradient flow.

- :mod:`.degradation`: train plain and residual networks of several depths with one recipe and
  budget, and compare their training/test error curves (He et al. 2015, Figure 6); its round
  plan and budget warning in :mod:`.budget`, verdict in :mod:`.verdict`, figure in :mod:`.figure`.
- :mod:`.gradients`: per-layer weight-gradient norms and per-block activation scale at
  initialisation and during the first training steps (:class:`GradientRecorder`).
"""

from .degradation import degradation_verdict, run_degradation
from .gradients import GradientRecorder, run_gradients

__all__ = ["GradientRecorder", "degradation_verdict", "run_degradation", "run_gradients"]
