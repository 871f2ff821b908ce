"""A run's trained network as an MLflow logged model (MLflow 3): linked to its run (the runs table's Models
column) and to the metrics of its last epoch (test accuracy among them), with a signature and an input
example, so that `mlflow.pytorch.load_model("models:/<model id>")` gives the network back in eval mode.

The network is pickled: loading it needs normexp importable, as in a clone with `make run`'s install.
MLflow 3.17's own default is torch.export's "pt2" graph, which cannot trace model=seq's masked tokens
(their count depends on the data), so the format is given here, the same for every model, and MLflow's
warning about that choice, one per run, is kept out of a sweep's output. Its requirements are pinned to
this torch only: MLflow's own inference of them would load the model again in a subprocess for each run."""

import copy
import importlib.metadata
import logging

import mlflow.pytorch
import numpy as np
from mlflow.tracking import MlflowClient
from torch import nn

MODEL_NAME = "model"
TESTED_BY = "test/acc"  # the metric of the test after training (training.classifier)

logging.getLogger("mlflow.pytorch").addFilter(lambda record: "Pickle or CloudPickle" not in record.getMessage())


def log(client: MlflowClient, experiment_id: str, run_id: str, model: nn.Module, example: np.ndarray) -> str:
    """Log `model` (a copy on the CPU, in eval mode) under `run_id`, after its test: at the step of the
    test metrics, the last epoch's, whose metrics MLflow copies onto the model. `example`: a few inputs
    (N, C, H, W). Returns the logged model's id."""
    step = client.get_metric_history(run_id, TESTED_BY)[-1].step
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id, model_type="classifier")
    cpu_copy = copy.deepcopy(model).cpu().eval()  # the trained one may sit on a GPU, and stays as it is
    # log_model writes through MLflow's default client: the tracking URI must be the run's.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        mlflow.pytorch.log_model(cpu_copy, name=MODEL_NAME, model_id=logged.model_id, run_id=run_id, step=step,
                                 input_example=example, serialization_format="pickle",
                                 pip_requirements=[f"torch=={importlib.metadata.version('torch')}"])
    finally:
        mlflow.set_tracking_uri(previous)
    return logged.model_id
