"""What training, evaluation, prediction, export, benchmarks and studies share at run time:
device and precision choice (:mod:`.device`), the inference and evaluation loops
(:mod:`.inference`) and the evaluation loader (:mod:`.loaders`)."""
