"""Cost of the probes (normexp.probes.norm_params): wall seconds per epoch with probes on vs off, default MLP + BN.

    python benchmarks/probe_overhead.py [--epochs 10] [--repeats 3]

An epoch is timed from its start until every callback's epoch end has run (training, validation and
the probes' per-epoch work); its epoch-end part, from the end of validation on, is timed apart. Runs
alternate off / on so machine load hits both alike; figures are medians over all epochs.
  overhead   = on / off - 1 of the median epochs (needs a quiet machine to mean much)
  in-run     = (epoch-end s on - epoch-end s off) / (epoch s on - epoch-end s on): the probes' share
               measured inside the same epochs, so it holds up on a loaded machine
The end-of-run work (tables, histogram file, figures) is reported apart, in seconds per run.
--gradients: the gradient-flow probe alone (normexp.probes.gradients, which works at every step, not only at
epoch ends): probes off, plus a GradientFlow whose hooks are timed; its share = seconds in its hooks /
the rest of the epoch, medians over all epochs.
Data: digits, and Fashion-MNIST shrunk to 6,000 training images when its files are installed in
/usr/share/datasets/fashion-mnist. Goal: under 10% per epoch on the default MLP.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from normexp import train
from normexp.probes.gradients import GradientFlow
from normexp.tracking.metrics import MetricBuffer

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class EpochTimer(pl.Callback):
    """Passed last to train.run, so its epoch end runs after the probes'."""

    def __init__(self):
        self.seconds: list[float] = []  # whole epochs
        self.end_seconds: list[float] = []  # from the end of validation to the end of the epoch

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self._validated = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        now = time.perf_counter()
        self.seconds.append(now - self._start)
        self.end_seconds.append(now - self._validated)


class TimedGradientFlow(GradientFlow):
    """GradientFlow with the seconds spent in its per-step and per-epoch hooks, per epoch."""

    def __init__(self):
        super().__init__(MetricBuffer(30))
        self.seconds: list[float] = []

    def _timed(self, hook, *args):
        start = time.perf_counter()
        hook(*args)
        self.seconds[-1] += time.perf_counter() - start

    def on_train_epoch_start(self, trainer, pl_module):
        self.seconds.append(0.0)
        self._timed(super().on_train_epoch_start, trainer, pl_module)

    def on_before_optimizer_step(self, *args):
        self._timed(super().on_before_optimizer_step, *args)

    def on_train_batch_end(self, *args):
        self._timed(super().on_train_batch_end, *args)

    def on_train_epoch_end(self, *args):
        self._timed(super().on_train_epoch_end, *args)


def measure(overrides: list[str], probes: bool, store: str, epochs: int, extra=()) -> tuple[EpochTimer, float]:
    """The epoch timings and the seconds of the whole run, for one run (`extra`: callbacks to add)."""
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=[
            f"tracking.uri=sqlite:///{store}/mlflow.db", "tracking.experiment=probe_overhead",
            f"trainer.max_epochs={epochs}", "trainer.progress_bar=false", f"probes.enabled={probes}", *overrides])
    timer = EpochTimer()
    start = time.perf_counter()
    train.run(cfg, callbacks=[*extra, timer])
    return timer, time.perf_counter() - start


def gradient_share(cases: dict[str, list[str]], store: str, epochs: int, repeats: int) -> None:
    print(f"{'data':<28} {'s/epoch':>8} {'gradient hooks s/epoch':>22} {'share':>7}")
    for name, overrides in cases.items():
        epoch, hooks = [], []
        for _ in range(repeats):
            flow = TimedGradientFlow()
            timer, _ = measure(overrides, False, store, epochs, extra=[flow])
            epoch += timer.seconds
            hooks += flow.seconds
        share = statistics.median(h / (e - h) for h, e in zip(hooks, epoch))
        print(f"{name:<28} {statistics.median(epoch):>8.4f} {statistics.median(hooks):>22.4f} {share:>+7.1%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, alternating on / off")
    parser.add_argument("--gradients", action="store_true", help="time the gradient-flow probe's hooks alone")
    args = parser.parse_args()
    cases = {"digits": ["dataset=digits"]}
    if FASHION_MNIST.exists():
        cases["fashion_mnist (6,000 train)"] = ["dataset=fashion_mnist", "dataset.train_size=6000"]
    print(f"default MLP + BN, {args.epochs} epochs x {args.repeats} runs per setting, torch threads "
          f"{torch.get_num_threads()}; medians over epochs\n")
    if args.gradients:
        with tempfile.TemporaryDirectory() as store:
            gradient_share(cases, store, args.epochs, args.repeats)
        return
    print(f"{'data':<28} {'off s/epoch':>11} {'on s/epoch':>10} {'overhead':>8} {'epoch-end off':>13} "
          f"{'epoch-end on':>12} {'in-run':>7} {'end-of-run s':>12}")
    with tempfile.TemporaryDirectory() as store:
        measure(cases["digits"], True, store, 1)  # warm-up: imports, MLflow tables, first figure
        for name, overrides in cases.items():
            epoch, end, rest = ({True: [], False: []} for _ in range(3))
            for _ in range(args.repeats):
                for probes in (False, True):
                    timer, wall = measure(overrides, probes, store, args.epochs)
                    epoch[probes] += timer.seconds
                    end[probes] += timer.end_seconds
                    rest[probes].append(wall - sum(timer.seconds))  # set-up, test and end-of-run work
            off, on = statistics.median(epoch[False]), statistics.median(epoch[True])
            end_off, end_on = statistics.median(end[False]), statistics.median(end[True])
            in_run = (end_on - end_off) / (on - end_on)
            end_of_run = statistics.median(rest[True]) - statistics.median(rest[False])
            print(f"{name:<28} {off:>11.4f} {on:>10.4f} {on / off - 1:>+8.1%} {end_off:>13.4f} {end_on:>12.4f} "
                  f"{in_run:>+7.1%} {end_of_run:>12.2f}")


if __name__ == "__main__":
    main()
