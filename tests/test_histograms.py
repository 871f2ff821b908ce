"""normexp.analysis.histograms: histograms of finite values, and their file in an MLflow run."""

import numpy as np

from normexp.analysis import histograms
from normexp.analysis.histograms import HistogramSeries


def test_histogram_ignores_non_finite_values_and_handles_constants():
    edges, counts = histograms.histogram(np.array([0.0, 1.0, 1.0, np.nan, np.inf]), bins=2)
    assert edges.tolist() == [0.0, 0.5, 1.0] and counts.tolist() == [1, 2]
    edges, counts = histograms.histogram(np.full((3, 4), 2.0), bins=4)
    assert counts.sum() == 12 and edges[0] < 2.0 < edges[-1]


def test_series_round_trip_through_a_run(mlflow_client, experiment_name):
    run_id = mlflow_client.create_run(mlflow_client.create_experiment(experiment_name)).info.run_id
    pre = HistogramSeries(np.array([1, 2]), np.array([[0.0, 1.0, 2.0], [0.0, 2.0, 4.0]]), np.array([[3.0, 1.0], [2.0, 2.0]]))
    histograms.save(mlflow_client, run_id, {"hidden1": {"pre": pre}})
    loaded = histograms.load(mlflow_client, run_id)["hidden1"]["pre"]
    for field in ("epochs", "edges", "counts"):
        assert np.array_equal(getattr(loaded, field), getattr(pre, field))
