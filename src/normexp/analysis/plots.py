"""Matplotlib figures. Headless (Agg): every function returns a Figure and never shows it;
`log_figure` writes one to an MLflow run and closes it. Grouped by topic; add new topics as sections."""

import functools

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, no GUI event loop
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from normexp.analysis.histograms import HistogramSeries


def _titles_above_axes(draw):
    """Titles sit just above their axes, in the figures `draw` makes (matplotlib reads axes.titley when it makes
    an axes). Left to matplotlib (None), each title's place is worked out again at every draw from the tight
    box of its axes' tick labels, though no figure here puts ticks on top: work repeated for each of the
    figures every run draws. Set for these figures only: rcParams are the whole process's."""
    @functools.wraps(draw)
    def drawn(*args, **kwargs) -> Figure:
        with plt.rc_context({"axes.titley": 1.0}):
            return draw(*args, **kwargs)

    return drawn


def log_figure(client, run_id: str, fig: Figure, artifact_file: str) -> None:
    """Save `fig` as `artifact_file` (e.g. plots/curves.png) in the run, then close it."""
    try:
        client.log_figure(run_id, fig, artifact_file)
    finally:
        plt.close(fig)


def _margins(fig: Figure, top: float = 0.45, right: float = 0.25, wspace: float = 0.3, hspace: float = 0.55) -> None:
    """Fixed margins in inches (top: room for titles; ~0.4 more for a suptitle), instead of a layout
    engine for the figures drawn for every run: constrained layout measures every text to place the
    axes, which made drawing them ~40% slower (benchmarks/run_overhead.py's wrap-up)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / width, right=1 - right / width, bottom=0.55 / height, top=1 - top / height,
                        wspace=wspace, hspace=hspace)


# ---- Training curves ---------------------------------------------------------------------------

@_titles_above_axes
def curves(epochs: list[dict[str, float]]) -> Figure:
    """Loss and accuracy per epoch, train and val; `epochs` as EpochHistory.epochs ({'train/loss': ...})."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    _margins(fig)
    x = np.arange(1, len(epochs) + 1)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        for stage, style in (("train", "-"), ("val", "--")):
            ax.plot(x, [e.get(f"{stage}/{metric}", np.nan) for e in epochs], style, marker="o", label=stage)
        ax.set(xlabel="epoch", ylabel=metric)
        ax.legend()
        ax.grid(alpha=0.3)
    loss_ax.set_title("loss")
    acc_ax.set_title("accuracy")
    return fig


# ---- Inside the network (probes) ---------------------------------------------------------------

@_titles_above_axes
def gamma_beta_histograms(params: dict[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Histograms of the learned gamma (scale) and beta (shift) over features, one outline per norm layer."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    _margins(fig, top=0.8)
    for index, (ax, name, neutral) in enumerate(((axes[0], "gamma", 1.0), (axes[1], "beta", 0.0))):
        for layer, pair in params.items():
            values = pair[index]
            # Only finite values: a diverged run's NaN parameters would make hist() raise.
            ax.hist(values[np.isfinite(values)], bins=30, histtype="step", linewidth=1.2,
                    label=f"{layer}: {values.mean():.3f} ± {values.std():.3f}")
        ax.axvline(neutral, color="black", linewidth=0.8, linestyle=":")  # the value that changes nothing
        ax.set(title=f"{name} (dotted: {neutral:g}, no change)", xlabel=name, ylabel="features")
        ax.legend(fontsize=8, title="layer: mean ± std", title_fontsize=8)
    fig.suptitle("learned norm parameters")
    return fig


def _densities(edges: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres and probability densities of one histogram (edges (B + 1,), counts (B,))."""
    widths = np.diff(edges)
    return (edges[:-1] + edges[1:]) / 2, counts / max(counts.sum(), 1) / widths


def _draw_evolution(ax, series: HistogramSeries, max_lines: int = 12) -> ScalarMappable:
    """One line per epoch, dark (first) to bright (last): how a distribution drifts during training.
    Long runs show `max_lines` epochs evenly spread, the first and last included."""
    colors = ScalarMappable(Normalize(series.epochs[0], max(series.epochs[-1], series.epochs[0] + 1)), "viridis")
    shown = np.unique(np.linspace(0, len(series.epochs) - 1, min(max_lines, len(series.epochs))).round().astype(int))
    for i in shown:
        ax.plot(*_densities(series.edges[i], series.counts[i]), color=colors.to_rgba(series.epochs[i]), linewidth=1)
    ax.set(xlabel="value", ylabel="density")
    ax.grid(alpha=0.3)
    return colors


@_titles_above_axes
def activation_evolution(layers: dict[str, HistogramSeries], what: str = "pre-activation") -> Figure:
    """One panel per layer: the distribution of `what` on the probe batch after each epoch."""
    columns = min(len(layers), 4)
    rows = -(-len(layers) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3 * rows), squeeze=False)
    _margins(fig, top=0.8, wspace=0.45)
    for ax, (layer, series) in zip(axes.flat, layers.items()):
        colors = _draw_evolution(ax, series)
        ax.set_title(layer)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    fig.colorbar(colors, ax=axes, label="epoch")
    fig.suptitle(f"{what} distribution per layer over epochs (fixed validation batch)")
    return fig


@_titles_above_axes
def activation_evolution_pair(left: HistogramSeries, right: HistogramSeries, labels: tuple[str, str],
                              layer: str, what: str = "pre-activation") -> Figure:
    """The same layer's distribution over epochs in two runs, side by side on a shared value axis.
    Series come from histograms.load(client, run_id)[layer]["pre"]."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True, layout="constrained")
    for ax, series, label in zip(axes, (left, right), labels):
        colors = _draw_evolution(ax, series)
        ax.set_title(label)
    fig.colorbar(colors, ax=axes, label="epoch")
    fig.suptitle(f"{layer} {what} over epochs")
    return fig


@_titles_above_axes
def before_after_norm(before: HistogramSeries, after: HistogramSeries, layer: str) -> Figure:
    """One layer's values entering and leaving its norm, at the first and the last probed epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    _margins(fig)
    for ax, series, title in ((axes[0], before, "before norm (input)"), (axes[1], after, "after norm (output)")):
        for index, style in ((0, ":"), (-1, "-")):
            centres, density = _densities(series.edges[index], series.counts[index])
            ax.plot(centres, density, style, label=f"epoch {series.epochs[index]}")
        ax.set(title=f"{layer}: {title}", xlabel="value", ylabel="density")
        ax.legend()
        ax.grid(alpha=0.3)
    return fig


# ---- Gradient flow (normexp.probes.gradients) ---------------------------------------------------------

@_titles_above_axes
def gradient_flow(epochs: list[int], norms: dict[str, list[float]], ratios: dict[str, list[float]]) -> Figure:
    """Gradient norm and update/weight ratio per hidden block (x: 1 = nearest the input), one line per
    epoch, dark (first) to bright (last); norms[layer] and ratios[layer] hold one value per epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    _margins(fig, top=0.8, wspace=0.35)
    colors = ScalarMappable(Normalize(epochs[0], max(epochs[-1], epochs[0] + 1)), "viridis")
    position = np.arange(1, len(norms) + 1)
    for ax, values, title in ((axes[0], norms, "gradient norm ||dL/dW||"),
                              (axes[1], ratios, "update / weight ||ΔW|| / ||W||")):
        per_epoch = np.array(list(values.values())).T  # (epochs, layers)
        for epoch, row in zip(epochs, per_epoch):
            ax.plot(position, row, marker=".", color=colors.to_rgba(epoch), linewidth=1)
        ax.set_yscale("log")
        ax.set(title=title, xlabel="hidden block (1 = nearest the input)")
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(colors, ax=axes, label="epoch")
    fig.suptitle("gradient flow: mean over each epoch's steps, per layer weight")
    return fig


# ---- Maximum stable learning rate (normexp.search) ---------------------------------------------

STABILITY_STYLE = {"stable": ("tab:green", "o"), "unstable": ("tab:orange", "s"), "diverged": ("tab:red", "x")}


@_titles_above_axes
def val_acc_vs_lr(points: list[tuple[float, float, str]], converge_acc: float, max_stable_lr: float | None,
                  min_unstable_lr: float | None, title: str) -> Figure:
    """Final val accuracy of every seed run against its learning rate (log x); points are
    (lr, acc, 'stable' | 'unstable' | 'diverged'): the trial's verdict, or 'diverged' for the seed run
    that diverged; a NaN accuracy is drawn at 0."""
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for kind, (color, marker) in STABILITY_STYLE.items():
        chosen = [(lr, acc) for lr, acc, k in points if k == kind]
        if chosen:
            lrs, accs = zip(*chosen)
            ax.scatter(lrs, np.nan_to_num(accs, nan=0.0), color=color, marker=marker, label=kind, zorder=3)
    ax.axhline(converge_acc, color="gray", linestyle="--", linewidth=0.8, label=f"converge_acc {converge_acc:g}")
    if max_stable_lr and min_unstable_lr:  # the bracket holding the boundary
        ax.axvspan(max_stable_lr, min_unstable_lr, color="tab:blue", alpha=0.15,
                   label=f"boundary in [{max_stable_lr:.3g}, {min_unstable_lr:.3g}]")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="final val accuracy", ylim=(-0.03, 1.03))
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


@_titles_above_axes
def max_stable_lr_bars(rows: list[dict]) -> Figure:
    """One bar per variant: max stable learning rate (log y), a whisker up to the lowest unstable rate
    above it, and the ratio to norm=none on top; rows as search.table() returns them."""
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2.5, 4), layout="constrained")
    x = np.arange(len(rows))
    tops = [r["max_stable_lr"] or np.nan for r in rows]
    ax.bar(x, tops, color="tab:blue")
    for i, r in enumerate(rows):
        if r["max_stable_lr"] and r["min_unstable_lr"]:
            ax.plot([i, i], [r["max_stable_lr"], r["min_unstable_lr"]], color="black", linewidth=1.5)
            ax.plot(i, r["min_unstable_lr"], marker="_", color="black", markersize=12)
        if not r["max_stable_lr"]:
            ax.annotate("no stable rate", (i, 0.02), xycoords=("data", "axes fraction"), ha="center")
        if r["ratio_to_none"]:
            ax.annotate(f"x{r['ratio_to_none']:.3g}", (i, r["min_unstable_lr"] or r["max_stable_lr"]),
                        xytext=(0, 4), textcoords="offset points", ha="center")
    ax.set_yscale("log")
    known = [v for r in rows for v in (r["max_stable_lr"], r["min_unstable_lr"]) if v]
    if known:  # room below the lowest bar (a log axis has no zero) and above the labels
        ax.set_ylim(min(known) / 4, max(known) * 3)
    one_group = len({r["group"] for r in rows}) == 1
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xticks(x, [r["variant"] if one_group else f"{r['variant']}\n{r['group']}" for r in rows])
    ax.set(ylabel="max stable learning rate", title="max stable lr (bar), bracket (whisker), ratio to none")
    ax.grid(alpha=0.3, axis="y", which="both")
    return fig


# ---- Sweep reports (normexp.report) ------------------------------------------------------------

def _variant_style(index: int) -> dict:
    """Ten colours, then the same colours dashed, dotted, ...: up to 40 variants stay distinguishable."""
    return {"color": f"C{index % 10}", "linestyle": ("-", "--", ":", "-.")[index // 10 % 4]}


@_titles_above_axes
def overlay_curves(loss: dict[str, np.ndarray], acc: dict[str, np.ndarray], reached: dict[str, float],
                   target_acc: float | None) -> Figure:
    """Every variant's training loss and val accuracy per epoch (mean over seeds; arrays (E,), epoch
    1 first) on one figure; a star marks the epoch a variant reaches `target_acc` (`reached[label]`,
    the mean over seeds; NaN when it never does)."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for index, label in enumerate(loss):
        style = _variant_style(index)
        loss_ax.plot(np.arange(1, len(loss[label]) + 1), loss[label], marker=".", label=label, **style)
        epochs = np.arange(1, len(acc[label]) + 1)
        acc_ax.plot(epochs, acc[label], marker=".", label=label, **style)
        if np.isfinite(reached.get(label, np.nan)) and len(epochs):
            acc_ax.plot(reached[label], np.interp(reached[label], epochs, acc[label]), marker="*", markersize=13,
                        color=style["color"], markeredgecolor="black", zorder=3)
    if target_acc is not None:
        acc_ax.axhline(target_acc, color="gray", linestyle="--", linewidth=0.8, label=f"target {target_acc:g} (★ reached)")
    loss_ax.set_yscale("log")  # a diverging run's loss is orders of magnitude above the others
    loss_ax.set(xlabel="epoch", ylabel="training loss (log)", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="val accuracy", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    acc_ax.legend(fontsize=7, loc="lower right")
    return fig


@_titles_above_axes
def accuracy_vs(x_name: str, series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> Figure:
    """Final val accuracy against a swept value (log x), one line per variant; series[label] =
    (x, mean, std over seeds, diverged) arrays of equal length; a red x marks a point where a run diverged."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for index, (label, (x, mean, std, diverged)) in enumerate(series.items()):
        order = np.argsort(x)
        x, mean, std, diverged = x[order], mean[order], std[order], diverged[order].astype(bool)
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label, **_variant_style(index))
        ax.scatter(x[diverged], mean[diverged], marker="x", s=90, color="red", zorder=3)
    ax.scatter([], [], marker="x", color="red", label="diverged")
    ax.set_xscale("log")
    ax.set(xlabel=x_name, ylabel="final val accuracy", title=f"final val accuracy vs {x_name}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig


@_titles_above_axes
def gradient_norm_per_layer(series: dict[str, np.ndarray]) -> Figure:
    """The last epoch's gradient norm per hidden block (x: 1 = nearest the input; mean over seeds), one
    line per variant; series[label] is (layers,), so variants of different depths share the axes."""
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for index, (label, norms) in enumerate(series.items()):
        ax.plot(np.arange(1, len(norms) + 1), norms, marker=".", label=label, **_variant_style(index))
    ax.set_yscale("log")
    ax.set(xlabel="hidden block (1 = nearest the input)", ylabel="||dL/dW||, last epoch",
           title="gradient norm per layer at the end of training")
    ax.grid(alpha=0.3, which="both")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    return fig
