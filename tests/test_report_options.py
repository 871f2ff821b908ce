"""normexp.report's own options: a store it cannot read, an unknown run id, an --out it cannot write, a
server timeout not above 0 are refused in one line (argparse's `prog: error: ...`, exit status 2) before
anything is read or written."""

import socket
import time

import pytest

from normexp.report import command as report_command
from normexp.tracking import sharing
from tests.mounts import read_only_folder  # noqa: F401 (a fixture)


def refused(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        report_command.main(list(args))
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and line.startswith("python -m normexp.report: error: ")
    return line.removeprefix("python -m normexp.report: error: ")


def test_a_store_that_cannot_be_read_is_refused(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path}/nothing.db"
    assert refused(capsys, "--experiment", "x", "--tracking-uri", missing).startswith(
        f"--tracking-uri={missing}: no store at {tmp_path}/nothing.db; pass the store the runs were tracked in")
    assert not (tmp_path / "nothing.db").exists()  # MLflow would have created an empty one
    (tmp_path / "notes.db").write_text("not a database\n" * 100)
    assert "is not a SQLite database (file is not a database)" in refused(
        capsys, "--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path}/notes.db")
    with socket.socket() as silent:  # accepts connections, answers nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        server = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        assert refused(capsys, "--experiment", "x", "--tracking-uri", server, "--server-timeout-s", "0.5").startswith(
            f"--tracking-uri={server} does not answer within 0.5 s (timed out)")
        assert time.monotonic() - start < 5
    for bad in ("0", "-1", "nan"):
        assert refused(capsys, "--experiment", "x", "--tracking-uri", missing, "--server-timeout-s", bad) == (
            f"--server-timeout-s {float(bad):g} is refused: it must be above 0, e.g. 30")


def test_unknown_run_ids_and_an_unwritable_out_are_refused(tmp_path, capsys, read_only_folder):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sharing.Client(uri).search_experiments()  # a real, empty MLflow store
    assert refused(capsys, "--parent", "0123456789abcdef", "--tracking-uri", uri).startswith(
        "no run '0123456789abcdef' in")
    assert refused(capsys, "--compare-activations", "aaaa", "bbbb", "--tracking-uri", uri).startswith(
        "--compare-activations: no run 'aaaa' in")
    assert refused(capsys, "--parent", "0123456789abcdef", "--tracking-uri", uri, "--out", str(read_only_folder)).startswith(
        f"--out={read_only_folder}: cannot write to {read_only_folder} (Read-only file system)")
