"""Seconds per epoch of one model on one data set: a plain PyTorch loop vs train.run.

    python benchmarks/epoch_time.py [--tiny] [--threads N] [--epochs 3] [--batch-sizes 32 128 512] [--norms none bn]
                                    [--compile]

  (a) plain   forward + backward + optimizer step over shuffled slices of the in-memory tensors,
              then a validation pass in eval mode: the floor for this model on this machine
  (b) run     train.run with its defaults: probes, MLflow logging, divergence guard, validation
  (c) run     train.run with probes.enabled=false
  (d) bare    the same model and optimizer in a LightningModule that only computes the loss, in a
              Trainer with no logger and no callback but the clock: Lightning's own cost per step, the
              floor of any Trainer-based run (train.run's own work is what (b) and (c) add to it)
  (e) compiled  with --compile: (a) over torch.compile(model) (the default inductor backend; the
              warm-up epoch includes compiling): whether trainer-independent compilation pays off here

(a) trains a copy of the very model (b) trains, taken at the start of fit with the same initial
weights and an optimizer of the same type and hyperparameters, on data.load's tensors. Its epochs run
inside the (b) run, one at each of its epoch ends and left out of its time, so machine load hits (a)
and (b) alike ((c) and (d) are compared with the same (a) epochs). An epoch of a run lasts from one train-epoch
start to the next (the last: to the end of training): training, validation, the probes, the MLflow
writes. Each run (and (a)) has one warm-up epoch, then figures are medians over --epochs epochs.

Columns: train s = epoch s - val s (epoch-end work included); x (a) = epoch s / (a)'s epoch s;
over us/step = (train s - (a)'s train s) / training steps; spread = (slowest - fastest epoch) / median:
above ~20% the machine was busy (the load average is printed); threads = torch threads during the epochs;
% peak = model FLOPs per epoch (forward + backward of each training batch, forward of validation,
counted by torch's FlopCounterMode) / epoch s / a large torch.matmul's FLOP/s measured at the start.

Data: Fashion-MNIST from Debian's dataset-fashion-mnist folder when it exists, digits otherwise; the
first line says which. The model and optimizer are the config's defaults (MLP 784-[256,128,64,32]-10,
Adam 1e-3). --tiny (digits, batch 128, for the test that keeps this script alive) takes ~15 s
with one thread.
On a 2-core machine shared with other work, --threads 1 gives steadier figures: two OpenMP threads
that lose a core to another process can make an epoch several times slower.
"""

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from normexp import data, train
from normexp.training.classifier import Classifier

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class PlainLoop:
    """(a): the same model and optimizer, trained without Lightning, MLflow or callbacks."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, splits: data.DataSplits,
                 batch_size: int, seed: int):
        self.model = copy.deepcopy(model)
        # The same optimizer class and per-group hyperparameters, over the copy's parameters.
        copies = dict(zip(model.parameters(), self.model.parameters()))
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [copies[p] for p in g["params"]]}
                  for g in optimizer.param_groups]
        self.optimizer = type(optimizer)(groups)
        self.train, self.val, self.batch_size = splits.train, splits.val, batch_size
        self.steps = len(self.train) // batch_size  # drop_last, as train.run's training batches
        self.generator = torch.Generator().manual_seed(seed)
        self.train_s: list[float] = []
        self.val_s: list[float] = []
        self.val_acc = float("nan")

    def epoch(self) -> None:
        model, optimizer, bs = self.model, self.optimizer, self.batch_size
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(self.train), generator=self.generator)
        with torch.enable_grad():
            for i in range(self.steps):
                index = order[i * bs : (i + 1) * bs]
                loss = F.cross_entropy(model(self.train.x[index]), self.train.y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        validating = time.perf_counter()
        model.eval()
        correct = torch.zeros((), dtype=torch.int64)
        with torch.no_grad():
            for i in range(0, len(self.val), bs):
                correct += (model(self.val.x[i : i + bs]).argmax(dim=1) == self.val.y[i : i + bs]).sum()
        self.val_acc = int(correct) / len(self.val)
        end = time.perf_counter()
        self.train_s.append(validating - start)
        self.val_s.append(end - validating)


class EpochClock(pl.Callback):
    """Passed last to train.run: wall seconds of each epoch and of its validation; with `plain`
    (a function of the model and the optimizer giving a PlainLoop), one plain epoch at each epoch
    end, left out of the run's epoch."""

    def __init__(self, plain=None):
        self.make_plain, self.plain = plain, None
        self.epoch_s: list[float] = []
        self.val_s: list[float] = []
        self.threads: set[int] = set()
        self._start = None
        self._left_out = 0.0

    def on_fit_start(self, trainer, pl_module):
        if self.make_plain is not None:
            self.plain = self.make_plain(pl_module.model, trainer.optimizers[0])

    def _close_epoch(self, now: float) -> None:
        if self._start is not None:
            self.epoch_s.append(now - self._start - self._left_out)
        self._start, self._left_out = now, 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._close_epoch(time.perf_counter())
        self.threads.add(torch.get_num_threads())

    def on_validation_start(self, trainer, pl_module):
        self._validating = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self.val_s.append(time.perf_counter() - self._validating)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.plain is not None:
            start = time.perf_counter()
            self.plain.epoch()
            self._left_out = time.perf_counter() - start

    def on_train_end(self, trainer, pl_module):
        self._close_epoch(time.perf_counter())


class BareLightning(Classifier):
    """(d): Classifier's model and optimizer, and nothing else: no metrics, no logging."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        self(batch[0])

    def on_train_batch_end(self, outputs, batch, batch_idx):
        pass  # Classifier's hook logs the epoch's means

    def on_validation_epoch_end(self):
        pass


def bare_lightning(cfg, clock: "EpochClock") -> float:
    """Fit (d) on cfg's data and model (the same seed: the same initial weights as the runs); its last
    epoch's val accuracy is not computed (nan)."""
    pl.seed_everything(cfg.seed, verbose=False)
    splits, model = train.prepare(cfg)
    batch_size = cfg.dataset.batch_size
    pl.Trainer(max_epochs=cfg.trainer.max_epochs, accelerator=cfg.trainer.accelerator, devices=1,
               deterministic=cfg.trainer.deterministic, logger=False, callbacks=[clock], enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(
        BareLightning(model, cfg.optim),
        data.Batches(splits.train, batch_size, shuffle=True, drop_last=True, seed=cfg.seed),
        data.Batches(splits.val, batch_size, shuffle=False, drop_last=False))
    return float("nan")


def matmul_flops(n: int) -> float:
    """FLOP/s of a large float32 torch.matmul on this machine: the best of a few."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(5))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(forward + backward FLOPs of one training batch, forward FLOPs of the same batch in eval mode)."""
    model = copy.deepcopy(model)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model.train()(x), y).backward()
    train_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return train_flops, counter.get_total_flops()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="digits, batch 128: a quick run for the test")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: what torch uses here, %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per run, after one warm-up (>= 3)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 32 128 512 (--tiny: 128)")
    parser.add_argument("--norms", nargs="+", default=["none", "bn"])
    parser.add_argument("--train-size", type=int, default=None, help="keep this many training images (default all)")
    parser.add_argument("--compile", action="store_true", help="add (e): the plain loop over torch.compile(model)")
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error(f"--epochs {args.epochs}: use 3 or more (the figures are medians)")
    batch_sizes = args.batch_sizes or ([128] if args.tiny else [32, 128, 512])
    torch.set_num_threads(args.threads)
    # Lightning's hint that this machine has SLURM's `srun` would repeat for every run.
    warnings.filterwarnings("ignore", message=".*`srun`")

    if FASHION_MNIST.exists() and not args.tiny:
        name, dataset = "Fashion-MNIST", ["dataset=fashion_mnist"]  # the config finds Debian's folder
    else:
        name, dataset = "digits", ["dataset=digits"]
        if not args.tiny:
            print(f"{FASHION_MNIST} does not exist (apt-get install dataset-fashion-mnist): using digits")
    if args.train_size is not None:
        dataset.append(f"dataset.train_size={args.train_size}")
    peak = matmul_flops(1024 if args.tiny else 2048)  # with args.threads

    with tempfile.TemporaryDirectory() as store:
        def config(norm: str, batch_size: int, probes: bool):
            with initialize_config_dir(str(CONF_DIR), version_base=None):
                return compose("train", overrides=[
                    f"tracking.uri=sqlite:///{store}/mlflow.db", "tracking.experiment=epoch_time", *dataset,
                    f"norm={norm}", f"dataset.batch_size={batch_size}", f"trainer.max_epochs={1 + args.epochs}",
                    "trainer.progress_bar=false", f"probes.enabled={str(probes).lower()}"])

        base_cfg = config(args.norms[0], batch_sizes[0], True)
        splits = data.load(base_cfg.dataset, base_cfg.seed)
        print(f"data: {name}, {len(splits.train)} training / {len(splits.val)} validation images; model "
              f"{base_cfg.model.name} {list(base_cfg.model.widths)}, {base_cfg.optim.name} lr {base_cfg.optim.lr:g}; "
              f"torch threads {args.threads} (default here {parser.get_default('threads')}); "
              f"matmul peak {peak / 1e9:.1f} GFLOP/s; 1 warm-up + median of {args.epochs} epochs; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
        header = (f"{'mode':<14} {'norm':<5} {'batch':>5} {'steps':>5} {'train s':>8} {'val s':>7} {'epoch s':>8} "
                  f"{'x (a)':>6} {'over us/step':>12} {'spread':>6} {'threads':>7} {'% peak':>6} {'val acc':>7}")
        print(header)
        print("-" * len(header))
        for norm in args.norms:
            for batch_size in batch_sizes:
                # (a) runs inside (b): a plain loop over a copy of (b)'s model, made when (b)'s fit starts.
                with_plain = EpochClock(lambda model, optimizer: PlainLoop(model, optimizer, splits, batch_size,
                                                                           base_cfg.seed))
                rows = {}
                for mode, probes, clock in (("(b) run", True, with_plain), ("(c) no probes", False, EpochClock())):
                    outcome = train.run(config(norm, batch_size, probes), callbacks=[clock])
                    rows[mode] = (clock.epoch_s[1:], clock.val_s[1:], clock.threads, outcome.final_val_acc)
                clock = EpochClock()
                acc = bare_lightning(config(norm, batch_size, False), clock)
                rows["(d) bare"] = (clock.epoch_s[1:], clock.val_s[1:], clock.threads, acc)
                plain = with_plain.plain
                plain_epochs = [t + v for t, v in zip(plain.train_s[1:], plain.val_s[1:])]  # the first: warm-up
                plain_train, plain_epoch = median(plain.train_s[1:]), median(plain_epochs)
                rows = {"(a) plain": (plain_epochs, plain.val_s[1:], {args.threads}, plain.val_acc)} | rows
                if args.compile:
                    compiled = PlainLoop(plain.model, plain.optimizer, splits, batch_size, base_cfg.seed)
                    compiled.model = torch.compile(compiled.model)  # the optimizer holds the same parameters
                    for _ in range(1 + args.epochs):
                        compiled.epoch()
                    rows["(e) compiled"] = ([t + v for t, v in zip(compiled.train_s[1:], compiled.val_s[1:])],
                                            compiled.val_s[1:], {args.threads}, compiled.val_acc)

                x, y = splits.train.x[:batch_size], splits.train.y[:batch_size]
                train_flops, eval_flops = model_flops(plain.model, x, y)
                epoch_flops = train_flops * plain.steps + eval_flops / batch_size * len(splits.val)
                for mode, (epochs, vals, threads, acc) in rows.items():
                    epoch, val = median(epochs), median(vals)
                    train_s = epoch - val if mode != "(a) plain" else plain_train
                    overhead = (train_s - plain_train) / plain.steps * 1e6
                    spread = (max(epochs) - min(epochs)) / epoch
                    print(f"{mode:<14} {norm:<5} {batch_size:>5} {plain.steps:>5} {train_s:>8.3f} {val:>7.3f} "
                          f"{epoch:>8.3f} {epoch / plain_epoch:>6.2f} {overhead:>12.0f} {spread:>6.0%} "
                          f"{','.join(map(str, sorted(threads))):>7} {epoch_flops / epoch / peak:>6.1%} {acc:>7.4f}")
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
