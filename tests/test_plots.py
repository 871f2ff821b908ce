import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from normexp.analysis import plots
from normexp.analysis.histograms import HistogramSeries


def series(epochs: int, shift: float) -> HistogramSeries:
    """Gaussian-ish histograms whose centre moves by `shift` per epoch."""
    edges = np.stack([np.linspace(-3 + shift * e, 3 + shift * e, 21) for e in range(epochs)])  # (E, 21)
    centres = np.linspace(-3, 3, 20)
    counts = np.tile(np.exp(-centres**2) * 1000, (epochs, 1)).round()  # (E, 20)
    return HistogramSeries(np.arange(1, epochs + 1), edges, counts)


@pytest.fixture(autouse=True)
def no_leftover_figures():
    yield
    plt.close("all")


def test_figures_are_headless():
    assert matplotlib.get_backend().lower() == "agg"


def test_titles_sit_above_their_axes_in_these_figures_only():
    fig = plots.curves([{"train/loss": 1.0, "val/loss": 1.2, "train/acc": 0.5, "val/acc": 0.4}])
    fig.canvas.draw()
    assert [ax.title.get_position()[1] for ax in fig.axes] == [1.0, 1.0]
    assert matplotlib.rcParams["axes.titley"] is None  # a figure of the user's own still places its titles itself
    _, own = plt.subplots()
    own.xaxis.tick_top()
    own.set_title("ticks on top")
    own.figure.canvas.draw()
    assert own.title.get_position()[1] > 1.0  # moved above the tick labels


def test_curves_plot_train_and_val_per_epoch():
    epochs = [{"train/loss": 1.0, "val/loss": 1.2, "train/acc": 0.5, "val/acc": 0.4},
              {"train/loss": 0.5, "val/loss": 0.7, "train/acc": 0.8, "val/acc": 0.7}]
    fig = plots.curves(epochs)
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "val"]
    assert list(loss_ax.lines[1].get_ydata()) == [1.2, 0.7]
    assert list(acc_ax.lines[0].get_xdata()) == [1, 2] and list(acc_ax.lines[0].get_ydata()) == [0.5, 0.8]


def test_activation_evolution_draws_one_line_per_epoch_per_layer():
    fig = plots.activation_evolution({"hidden1": series(3, 0.5), "hidden2": series(3, 0.0)})
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["hidden1", "hidden2"]
    assert all(len(ax.lines) == 3 for ax in panels)
    first, last = panels[0].lines[0], panels[0].lines[-1]
    assert first.get_color() != last.get_color()  # epochs are told apart by colour
    density, centres = last.get_ydata(), last.get_xdata()
    assert np.sum(density * np.diff(centres)[0]) == pytest.approx(1.0)  # a probability density


def test_activation_evolution_of_a_long_run_shows_at_most_12_epochs():
    fig = plots.activation_evolution({"hidden1": series(40, 0.1)})
    assert len(fig.axes[0].lines) == 12


def test_activation_evolution_pair_puts_two_runs_side_by_side():
    fig = plots.activation_evolution_pair(series(2, 0.0), series(4, 1.0), ("bn", "none"), "hidden2")
    left, right = [ax for ax in fig.axes if ax.get_title()]
    assert (left.get_title(), right.get_title()) == ("bn", "none")
    assert (len(left.lines), len(right.lines)) == (2, 4)
    assert left.get_xlim() == right.get_xlim()  # one value axis, so the spreads compare directly
    assert "hidden2" in fig._suptitle.get_text()


def test_gamma_beta_and_before_after_figures():
    fig = plots.gamma_beta_histograms({"hidden1": (np.full(8, 1.1), np.zeros(8)),
                                       "hidden2": (np.array([1.0, 2.0, np.nan]), np.ones(3))})  # NaN: a diverged run
    gamma_ax, beta_ax = fig.axes
    assert [t.get_text() for t in beta_ax.get_legend().get_texts()] == ["hidden1: 0.000 ± 0.000", "hidden2: 1.000 ± 0.000"]
    assert gamma_ax.get_legend().get_texts()[0].get_text() == "hidden1: 1.100 ± 0.000"
    fig = plots.before_after_norm(series(3, 2.0), series(3, 0.0), "hidden1")
    assert [line.get_label() for line in fig.axes[0].lines] == ["epoch 1", "epoch 3"]


def test_log_figure_writes_a_png_to_the_run_and_closes_the_figure(mlflow_client, experiment_name, tmp_path):
    experiment_id = mlflow_client.create_experiment(experiment_name)
    run_id = mlflow_client.create_run(experiment_id).info.run_id
    fig = plots.curves([{"train/loss": 1.0}])
    plots.log_figure(mlflow_client, run_id, fig, "plots/curves.png")
    assert not plt.fignum_exists(fig.number)
    with open(mlflow_client.download_artifacts(run_id, "plots/curves.png", str(tmp_path)), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_gradient_flow_draws_each_epoch_across_the_blocks():
    fig = plots.gradient_flow([1, 2, 3], {"hidden1": [0.1, 0.2, 0.3], "hidden2": [1.0, 2.0, 3.0]},
                              {"hidden1": [1e-3, 1e-3, 1e-3], "hidden2": [2e-3, 2e-3, 2e-3]})
    norm_ax, ratio_ax = [ax for ax in fig.axes if ax.get_title()]
    assert len(norm_ax.lines) == len(ratio_ax.lines) == 3  # one line per epoch
    assert list(norm_ax.lines[2].get_xdata()) == [1, 2] and list(norm_ax.lines[2].get_ydata()) == [0.3, 3.0]
    assert norm_ax.get_yscale() == "log"


def test_gradient_norm_per_layer_has_one_line_per_variant_of_any_depth():
    fig = plots.gradient_norm_per_layer({"norm=none, depth=2": np.array([1e-3, 1e-1]),
                                         "norm=bn, depth=4": np.array([0.1, 0.1, 0.2, 0.3])})
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["norm=none, depth=2", "norm=bn, depth=4"]
    assert list(ax.lines[1].get_xdata()) == [1, 2, 3, 4]
