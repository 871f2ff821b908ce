"""How the probes write to their run: metrics in batches (tracking.metrics.MetricBuffer), tables as
Markdown and CSV."""

from normexp.analysis import tables
from normexp.tracking.metrics import MetricBuffer

# Metrics are buffered. Long runs still show them live, written at the first epoch end this many seconds
# after the last write.
WRITE_EVERY_S = 30


def log_table(trainer, rows: list[dict], stem: str, title: str, caption: str) -> None:
    """rows as probes/<stem>.md (numbers to 4 significant digits, the caption below) and probes/<stem>.csv."""
    table = tables.from_records(stem, title, rows, [caption])
    table.log_to_run(trainer.logger.experiment, trainer.logger.run_id, "probes")


def write(buffer: MetricBuffer, trainer, force: bool = False) -> None:
    buffer.write(trainer.logger.experiment, trainer.logger.run_id, force)
