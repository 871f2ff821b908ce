"""normexp.analysis.tables: one table as Markdown and CSV, written to a run and to a folder."""

from pathlib import Path

from normexp.analysis import tables


def example() -> tables.Table:
    return tables.from_records("speed", "Seconds per epoch", [{"norm": "bn", "epoch_s": 0.123456, "note": None},
                                                             {"norm": "none", "epoch_s": 2.0, "note": "slow"}],
                               ["measured on 2 cores"])


def test_markdown_shows_cells_to_four_digits_and_the_notes():
    assert example().markdown == ("### Seconds per epoch\n\n| norm | epoch_s | note |\n|---|---|---|\n"
                                  "| bn | 0.1235 | - |\n| none | 2 | slow |\n\nmeasured on 2 cores\n")


def test_csv_keeps_the_numbers():
    assert example().csv == "norm,epoch_s,note\nbn,0.123456,\nnone,2.0,slow\n"


def test_a_table_is_written_to_a_run_and_to_a_folder_alike(mlflow_client, experiment_name, tmp_path):
    run_id = mlflow_client.create_run(mlflow_client.create_experiment(experiment_name)).info.run_id
    example().log_to_run(mlflow_client, run_id, "probes")
    assert sorted(a.path for a in mlflow_client.list_artifacts(run_id, "probes")) == ["probes/speed.csv", "probes/speed.md"]
    saved = example().save(tmp_path)
    downloaded = Path(mlflow_client.download_artifacts(run_id, "probes/speed.csv", str(tmp_path / "dl")))
    assert saved == [tmp_path / "speed.md", tmp_path / "speed.csv"] and downloaded.read_text() == saved[1].read_text()
