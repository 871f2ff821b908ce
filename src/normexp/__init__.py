"""normexp: normalization-layer experiments, tracked in MLflow."""

import gc

# A command's process imports torch, Lightning, MLflow and Hydra first: ~1M objects. Each of the garbage
# collector's full passes during those imports traverses every object imported so far (8 passes, ~1.2 s
# of a ~6 s start; benchmarks/startup.py) and frees nothing. Until tracking.commands.freeze_imports has
# moved the imported objects out of the collector's way and put GC_THRESHOLDS back, a full pass waits for
# 1,000 passes over the middle generation instead of 10; the young generations are collected as usual.
GC_THRESHOLDS = gc.get_threshold()
gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], 1000)
