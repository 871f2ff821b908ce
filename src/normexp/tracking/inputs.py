"""A run's data as MLflow dataset inputs: its train, validation and test splits, each with the digest of
the images it actually used (after the subset and the seeded split), its size and where the images came
from. The MLflow UI shows them in the runs table's Dataset column and filters runs by them."""

import warnings

import mlflow.data
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from normexp import data

CONTEXTS = {"train": "train", "val": "validation", "test": "test"}  # DataSplits field -> MLflow's context


def _source(where: str):
    """A library function (scikit-learn's digits) is code; a folder or a URL MLflow resolves itself."""
    if where == data.DIGITS_SOURCE:
        return CodeDatasetSource({"function": where})
    with warnings.catch_warnings():  # a local path matches two of MLflow's equivalent file sources; it warns
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.dataset_source_registry.resolve_dataset_source(where)


def datasets(splits: data.DataSplits, name: str) -> list[DatasetInput]:
    """The three splits as dataset inputs, named `name` (the dataset group's name) and told apart by context."""
    source = _source(splits.source)
    inputs = []
    for field, context in CONTEXTS.items():
        split = getattr(splits, field)
        dataset = mlflow.data.from_numpy(split.x.cpu().numpy(), targets=split.y.cpu().numpy(), source=source,
                                         name=name)  # digest: of the standardized images and labels, (N, C, H, W), (N,)
        inputs.append(DatasetInput(Dataset(**dataset.to_dict()), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return inputs


def log_splits(client: MlflowClient, run_id: str, splits: data.DataSplits, name: str) -> None:
    client.log_inputs(run_id, datasets=datasets(splits, name))
