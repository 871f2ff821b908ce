"""normexp: normalization-layer experiments, tracked in MLflow."""
