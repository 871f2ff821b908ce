"""Training epochs the stable-LR search (normexp.search) spends to bracket the boundary, against a log
grid of the same resolution over the same range, on digits with the default MLP and Adam.

    python benchmarks/search_efficiency.py [--norms bn none] [--check-grid] [overrides ...]

The search runs with conf/search/stable_lr.yaml (lr 1e-4..10, bracket within a factor 1.25,
search.epochs x search.seeds per rate) in a temporary Optuna storage and MLflow store. The grid's
cost is counted, not run: points x seeds x epochs, every point trained in full, as a hand-picked
grid is. --check-grid trains the grid points within a factor 1.25^3 of each bracket (seeds and
epochs as the search) and checks that those below it are stable and those above it unstable.
Goal: the search costs a quarter of the grid's epochs or fewer.
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from normexp import search, train

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def grid_points(lr_min: float, lr_max: float, factor: float) -> list[float]:
    """The coarsest log grid from lr_min to lr_max whose neighbours are at most `factor` apart."""
    steps = math.ceil(math.log(lr_max / lr_min) / math.log(factor) - 1e-9)
    return [lr_min * (lr_max / lr_min) ** (k / steps) for k in range(steps + 1)]


def stable(cfg, lr: float) -> bool:
    """The search's definition, trained the way a grid would: every seed."""
    outcomes = [train.run(OmegaConf.merge(cfg, {"optim": {"lr": lr}, "seed": cfg.seed + i,
                                                "trainer": {"max_epochs": cfg.search.epochs}}))
                for i in range(cfg.search.seeds)]
    return all(o.converged for o in outcomes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["bn", "none"])
    parser.add_argument("--check-grid", action="store_true", help="train the grid points near each bracket")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every study, e.g. search.seeds=3")
    args = parser.parse_args()
    store = tempfile.mkdtemp(prefix="search_efficiency_")
    rows = []
    for norm in args.norms:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = compose("search", overrides=[
                f"tracking.uri=sqlite:///{store}/mlflow.db", "tracking.experiment=search_efficiency",
                f"search.storage=sqlite:///{store}/optuna.db", "trainer.progress_bar=false", f"norm={norm}",
                *args.overrides])
        s = cfg.search
        start = time.perf_counter()
        summary = search.run(cfg)
        seconds = time.perf_counter() - start
        grid = grid_points(s.lr_min, s.lr_max, s.resolution)
        grid_epochs = len(grid) * s.seeds * s.epochs
        rows.append((norm, summary, seconds, len(grid), grid_epochs))
        if args.check_grid and summary["max_stable_lr"] and summary["min_unstable_lr"]:
            near = [lr for lr in grid if summary["max_stable_lr"] / s.resolution**3 <= lr
                    <= summary["min_unstable_lr"] * s.resolution**3]
            verdicts = {lr: stable(cfg, lr) for lr in near}
            # A grid point inside the bracket may go either way; outside it must match.
            agree = all(v for lr, v in verdicts.items() if lr <= summary["max_stable_lr"]) and not any(
                v for lr, v in verdicts.items() if lr >= summary["min_unstable_lr"])
            cells = ", ".join(f"{lr:.4g} {'S' if v else 'U'}" for lr, v in verdicts.items())
            print(f"{norm}: grid near the bracket: {cells} -> "
                  f"{'agrees' if agree else 'DISAGREES (seed noise or non-monotone)'} with the bracket")

    print(f"\ndigits, default MLP + Adam; lr {s.lr_min:g}..{s.lr_max:g}, resolution {s.resolution:g}, "
          f"{s.seeds} seed(s) x {s.epochs} epoch(s) per rate\n")
    print("| norm | bracket (max stable .. min unstable) | search trials | search epochs | grid points | "
          "grid epochs | search / grid | search wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for norm, summary, seconds, points, grid_epochs in rows:
        top, low = summary["max_stable_lr"], summary["min_unstable_lr"]
        bracket = f"{top:.4g} .. {low:.4g}" if top and low else f"{top} .. {low}"
        print(f"| {norm} | {bracket} | {summary['trials']} | {summary['epochs_spent']} | {points} | {grid_epochs} | "
              f"{summary['epochs_spent'] / grid_epochs:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
