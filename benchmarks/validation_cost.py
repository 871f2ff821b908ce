"""What validating several times an epoch costs (trainer.val_checks_per_epoch): the mean epoch of the MLP on
Fashion-MNIST with 1 and with 10 validations an epoch, each run in this process on --threads torch threads.

    python benchmarks/validation_cost.py [--epochs 2] [--threads 1] [--norm bn]

Prints time/epoch_s (training, every validation, the callbacks' epoch-end work) and time/train_s (the same
without validation) per setting, and the ratio of the epochs. Probes off: they run once an epoch either way.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import normexp.config.schema  # noqa: E402,F401  (registers the schemas conf/*.yaml extend)
from normexp import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--norm", default="bn")
    parser.add_argument("--dataset", default="fashion_mnist")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs = {}
    with tempfile.TemporaryDirectory() as folder, initialize_config_dir(str(ROOT / "conf"), version_base=None):
        for checks in (1, 10):
            cfg = compose("train", overrides=[
                f"dataset={args.dataset}", f"norm={args.norm}", f"trainer.max_epochs={args.epochs}",
                f"trainer.val_checks_per_epoch={checks}", "probes.enabled=false", "trainer.progress_bar=false",
                f"tracking.uri=sqlite:///{folder}/mlflow.db"])
            outcome = train.run(cfg)
            epochs[checks] = outcome.epoch_s
            print(f"{checks:>2} validation(s) an epoch: {outcome.epoch_s:.2f} s/epoch, {outcome.train_s:.2f} s of it training "
                  f"({args.dataset}, mlp, {args.norm}, {args.threads} thread(s), {args.epochs} epochs)", flush=True)
    print(f"10 validations an epoch cost {epochs[10] / epochs[1]:.2f}x the epoch of 1")


if __name__ == "__main__":
    main()
