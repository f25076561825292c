"""Training: configuration and recipes, the loops, checkpoints, schedules, distributed setup.

Note: ``resnetkit.train`` (the attribute) is the API function; this package stays importable
as ``resnetkit.train.<module>``.
"""
