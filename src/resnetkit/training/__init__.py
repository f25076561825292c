"""Training only: configuration and recipes (config), the run held by a Trainer (trainer), what a
run needs before its first step (setup), the run directory (rundir), the epoch loop (loop), the
learning-rate schedule, the optimizer, distributed setup and starting from pretrained weights.

``resnetkit.train`` is the API function that drives this package (:func:`resnetkit.api.train`).
"""
