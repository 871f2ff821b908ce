"""Faults of the machine, not of the code or the config: a full disk, a folder that can no longer be
written, a tracking server that stopped answering. A run they stop ends FAILED with its error (where
the store can still be written; tracking.ending), and the command ends with one line naming the
fault and the fix (`explain`, printed by normexp.tracking.commands) instead of a traceback. Any other exception is
a bug and keeps its traceback."""

import errno
import urllib.parse

import requests
from mlflow.exceptions import MlflowException

FULL = {errno.ENOSPC, errno.EDQUOT}
UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.ENOTDIR, errno.ESTALE}
# SQLite's words for a store it can no longer write (inside MLflow's and SQLAlchemy's exceptions).
SQLITE_FULL, SQLITE_UNWRITABLE = "database or disk is full", ("attempt to write a readonly database", "disk I/O error")
LEFT_RUNNING = ("the runs it could not end stay RUNNING until the next normexp command on the store ends them "
                "KILLED (after tracking.lease_s)")


def explain(error: BaseException) -> str | None:
    """The one line for `error` when it, or an exception it was raised from or during, is a fault;
    None for anything else."""
    for cause in _chain(error):
        line = _explain_one(cause)
        if line:
            return line
    return None


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from or while handling, but those hidden by `from None`."""
    seen, pending = [], [error]
    while pending:
        current = pending.pop(0)
        if current is not None and all(current is not s for s in seen):
            seen.append(current)
            pending += [current.__cause__, None if current.__suppress_context__ else current.__context__]
    return seen


def _explain_one(error: BaseException) -> str | None:
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        url = getattr(error.request, "url", None) or ""
        server = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(url)) if url else "the tracking server"
        return (f"the tracking server {server} stopped answering ({type(error).__name__}); {LEFT_RUNNING}: "
                "start it again, then run the command again")
    if isinstance(error, OSError) and error.errno in FULL | UNWRITABLE:
        where = error.filename2 or error.filename or "a file of the run"  # a move's: where it was going
        if error.errno in FULL:
            return (f"no space left on the device of {where} ({error.strerror}); free space there, or put the "
                    "artifacts and checkpoints on another disk with tracking.artifact_root=<folder>")
        return (f"cannot write {where} ({error.strerror}): the artifact store went away or became read-only; "
                "make it writable again, or choose another with tracking.artifact_root=<folder>")
    if isinstance(error, MlflowException):
        text = str(error)
        if SQLITE_FULL in text:
            return (f"the tracking store's disk is full ({SQLITE_FULL}); {LEFT_RUNNING}: free space beside the "
                    "store, or use another with tracking.uri=sqlite:///<file>")
        if any(words in text for words in SQLITE_UNWRITABLE):
            return (f"the tracking store can no longer be written ({text.strip().splitlines()[0][:200]}); "
                    f"{LEFT_RUNNING}: make it writable again, or use another with tracking.uri=sqlite:///<file>")
    return None
