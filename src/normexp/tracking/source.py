"""Where a run came from (the MLflow UI's Source column): the git commit, the entry point and its command line."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from normexp.tracking import stores

# The normexp command whose runs this process creates (record_command): environment variables, because a
# sweep's joblib workers and SLURM jobs inherit them from the launching process, whose command it is.
ENTRY_POINT_ENV, COMMAND_ENV = "NORMEXP_ENTRY_POINT", "NORMEXP_COMMAND"


def record_command(entry_point: str, argv: list[str]) -> None:
    """`python -m <entry_point> <argv>` is the command of the runs this process (and its workers) create."""
    os.environ[ENTRY_POINT_ENV] = entry_point
    os.environ[COMMAND_ENV] = shlex.join(["python", "-m", entry_point, *argv])


def tags() -> dict[str, str]:
    """Where a run came from (the MLflow UI's Source column): the entry point, e.g. normexp.train, and
    its whole command line as the tag `command`. Code that calls normexp.train.run directly is the
    source itself: its program and arguments."""
    entry_point = os.environ.get(ENTRY_POINT_ENV) or Path(sys.argv[0]).name
    return {MLFLOW_GIT_COMMIT: git_commit(), MLFLOW_SOURCE_NAME: entry_point, MLFLOW_SOURCE_TYPE: "LOCAL",
            "command": (os.environ.get(COMMAND_ENV) or shlex.join(sys.argv))[:MAX_TAG_VAL_LENGTH]}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=stores.PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
