"""Table: one table as Markdown (cells as shown) and CSV (the numbers), and the one place that
writes tables, to an MLflow run or to a folder. Probes, reports and the search all use it."""

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    name: str                   # file stem: convergence.md, convergence.csv
    title: str
    header: list[str]
    rows: list[list[str]]       # cells as shown
    records: list[dict]         # the same content as numbers, for the CSV
    notes: list[str] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + [""] + [f"{note}  " for note in self.notes]).rstrip() + "\n"

    @property
    def csv(self) -> str:
        out = io.StringIO()
        keys = list(dict.fromkeys(k for record in self.records for k in record))
        writer = csv.DictWriter(out, keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        return out.getvalue()

    def log_to_run(self, client, run_id: str, folder: str) -> None:
        """<folder>/<name>.md and <folder>/<name>.csv in the MLflow run (folder "" for its root)."""
        prefix = f"{folder}/" if folder else ""
        client.log_text(run_id, self.markdown, f"{prefix}{self.name}.md")
        client.log_text(run_id, self.csv, f"{prefix}{self.name}.csv")

    def save(self, folder: Path) -> list[Path]:
        """<name>.md and <name>.csv in `folder`; the paths written."""
        paths = [folder / f"{self.name}.md", folder / f"{self.name}.csv"]
        for path, text in zip(paths, (self.markdown, self.csv)):
            path.write_text(text)
        return paths


def from_records(name: str, title: str, records: list[dict], notes: list[str] = ()) -> Table:
    """A table whose cells are its records' values: floats to 4 significant digits, None as '-'."""
    header = list(dict.fromkeys(k for record in records for k in record))
    rows = [["-" if (v := record.get(k)) is None else f"{v:.4g}" if isinstance(v, float) else str(v)
             for k in header] for record in records]
    return Table(name, title, header, rows, records, list(notes))
