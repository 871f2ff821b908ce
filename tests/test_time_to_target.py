"""Time to target below an epoch (trainer.val_checks_per_epoch) and stopping once it has held
(trainer.stop_at_target): real runs on digits, tracked in the test's SQLite store."""

import pytorch_lightning as pl

from normexp import train
from normexp.training.callbacks import epochs_trained


class Checks(pl.Callback):
    """Every validation's (epochs trained, val accuracy), as the run saw it."""

    def __init__(self):
        self.seen = []

    def on_validation_end(self, trainer, pl_module):
        self.seen.append((epochs_trained(trainer), float(trainer.callback_metrics["val/acc"])))


def test_five_validations_an_epoch_measure_the_time_to_target_in_fifths(compose_cfg, experiment_runs):
    checks = Checks()
    outcome = train.run(compose_cfg("probes.enabled=false", "trainer.max_epochs=3", "trainer.val_checks_per_epoch=5",
                                    "dataset.target_acc=0.8"), callbacks=[checks])
    # digits: 20 training batches of 64, a validation after every 4th
    assert [round(e, 2) for e, _ in checks.seen] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0]
    assert outcome.epochs == 3 and outcome.epochs_to_target == train.epochs_to_target(checks.seen, 0.8)
    assert outcome.epochs_to_target % 1 != 0  # a fraction of an epoch (0.8 on this seed)
    (run,) = experiment_runs()
    assert run.data.metrics["outcome/epochs_to_target"] == outcome.epochs_to_target


def test_stop_at_target_ends_training_once_the_target_has_held_for_three_validations(compose_cfg):
    checks = Checks()
    outcome = train.run(compose_cfg("probes.enabled=false", "trainer.max_epochs=10", "trainer.val_checks_per_epoch=5",
                                    "trainer.stop_at_target=true", "dataset.target_acc=0.9"), callbacks=[checks])
    reached = outcome.epochs_to_target
    held = [e for e, _ in checks.seen if e >= reached][:3]
    assert all(acc >= 0.9 for e, acc in checks.seen if e in held) and len(held) == 3
    # stopped a batch after the third (the batch that logs the epoch's train means), validated once more
    assert checks.seen[-1][0] <= held[-1] + 1 / 20 + 1e-9 and outcome.epochs < 10
    assert outcome.train_val_gap == outcome.train_val_gap  # the stopped epoch has its train means: not NaN


def test_without_stop_at_target_the_run_keeps_its_whole_budget(compose_cfg):
    outcome = train.run(compose_cfg("probes.enabled=false", "trainer.max_epochs=4", "dataset.target_acc=0.5"))
    assert outcome.epochs == 4 and outcome.epochs_to_target == 1.0  # one validation an epoch: whole epochs
