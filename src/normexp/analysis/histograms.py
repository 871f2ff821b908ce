"""Histogram series: one quantity's histogram after each epoch, and their file in an MLflow run
(probes write it, plots draw it, reports read it back). NumPy only: reading needs no torch."""

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARTIFACT = "probes/histograms.npz"  # arrays: epochs, <layer>/<what>/edges, <layer>/<what>/counts


@dataclass
class HistogramSeries:
    """Each epoch has its own bin edges (min..max of the data)."""
    epochs: np.ndarray  # (E,) 1-based
    edges: np.ndarray   # (E, bins + 1)
    counts: np.ndarray  # (E, bins)


def histogram(x: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges (bins + 1,), counts (bins,)) over the finite values of x, from their min to their max."""
    x = x.ravel()
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):  # only a diverging run pays for the filtering
        x = x[np.isfinite(x)]
        lo, hi = (float(x.min()), float(x.max())) if x.size else (-1.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(x, bins, (lo, hi))
    return edges, counts.astype(np.float32)


def save(client, run_id: str, series: dict[str, dict[str, HistogramSeries]]) -> None:
    """series: {layer: {"pre" | "norm_in" | "norm_out": series}}, all over the same epochs."""
    arrays = {f"{layer}/{what}/{field}": getattr(s, field)
              for layer, by_what in series.items() for what, s in by_what.items() for field in ("edges", "counts")}
    epochs = next(s.epochs for by_what in series.values() for s in by_what.values())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(ARTIFACT).name
        np.savez_compressed(path, epochs=epochs, **arrays)
        client.log_artifact(run_id, str(path), str(Path(ARTIFACT).parent))


def load(client, run_id: str) -> dict[str, dict[str, HistogramSeries]]:
    """A run's histogram series back from MLflow, as `save` took them."""
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, ARTIFACT, folder)
        with np.load(path) as saved:
            arrays = dict(saved)
    series = {}
    for key in arrays:
        if key.endswith("/counts"):
            layer, what, _ = key.split("/")
            series.setdefault(layer, {})[what] = HistogramSeries(
                arrays["epochs"], arrays[f"{layer}/{what}/edges"], arrays[key])
    return series
