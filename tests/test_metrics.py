"""normexp.tracking.metrics: Lightning's logger never ends the run, and the probes' metric buffer."""

from omegaconf import OmegaConf

from normexp.tracking.metrics import MetricBuffer, MetricsLogger


def new_run(client, experiment_name: str) -> str:
    return client.create_run(client.create_experiment(experiment_name)).info.run_id


def test_the_lightning_logger_writes_metrics_by_epoch_and_never_ends_the_run(mlflow_client, experiment_name,
                                                                             tracking_uri):
    run_id = new_run(mlflow_client, experiment_name)
    logger = MetricsLogger(OmegaConf.create({"uri": tracking_uri, "experiment": experiment_name}), run_id)
    logger.log_metrics({"val/acc": 0.5, "epoch": 0.0}, step=1)
    logger.finalize("success")
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "RUNNING" and "epoch" not in run.data.metrics  # Lightning's own counter is dropped
    assert [(m.value, m.step) for m in mlflow_client.get_metric_history(run_id, "val/acc")] == [(0.5, 1)]


def test_a_metric_buffer_round_trips_through_its_state(mlflow_client, experiment_name):
    buffer = MetricBuffer(every_s=3600)
    buffer.add({"act/hidden1/pre_mean": 0.25, "bn/hidden1/gamma_mean": 1.5}, step=3)
    restored = MetricBuffer(every_s=3600)
    restored.load_state_dict(buffer.state_dict())
    assert restored.items == buffer.items
    run_id = new_run(mlflow_client, experiment_name)
    buffer.write(mlflow_client, run_id, force=True)
    restored.write(mlflow_client, run_id, force=True)  # after a resume: the same metrics once more
    assert [(m.value, m.step) for m in mlflow_client.get_metric_history(run_id, "act/hidden1/pre_mean")] == [(0.25, 3)]
