"""`python -m normexp.report`: a comparison report of MLflow runs (tables, figures), written to files.

    python -m normexp.report --parent RUN_ID                      # a multirun's parent run
    python -m normexp.report --experiment convergence --filter "tags.norm = 'bn'"
    python -m normexp.report --compare-activations RUN_A RUN_B --layer hidden1
"""

import argparse
from pathlib import Path

from mlflow.tracking import MlflowClient

from normexp import report
from normexp.analysis import plots
from normexp.errors import ConfigError
from normexp.tracking import faults, lifecycle, stores


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m normexp.report", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--parent", metavar="RUN_ID", help="the MLflow parent run of a multirun")
    source.add_argument("--experiment", metavar="NAME", help="the training runs of this MLflow experiment")
    source.add_argument("--compare-activations", nargs=2, metavar=("RUN_A", "RUN_B"),
                        help="one layer's activation distribution over the epochs of two runs, side by side")
    parser.add_argument("--filter", default="", metavar="MLFLOW_FILTER",
                        help="with --experiment: only runs matching it, e.g. \"tags.norm = 'bn'\"")
    parser.add_argument("--layer", default="hidden1", help="with --compare-activations (default: %(default)s)")
    parser.add_argument("--tracking-uri", default=stores.default_tracking_uri(), help="default: %(default)s")
    parser.add_argument("--server-timeout-s", type=float, default=stores.tracking_defaults().server_timeout_s,
                        metavar="SECONDS", help="how long a tracking server may take to answer (default: "
                                                "%(default)g, as tracking.server_timeout_s)")
    parser.add_argument("--out", type=Path, help="folder for the files (default: reports/<parent run id, "
                                                 "experiment or compared runs>/ in the project)")
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """The CLI; returns the paths of the files written. Bad input is one line and exit status 2 (argparse's);
    a fault of the machine (a full disk, a silent server) one line and 1; anything else keeps its traceback."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.filter and not args.experiment:
        parser.error("--filter goes with --experiment")
    try:
        return _write(args)
    except ConfigError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except Exception as error:
        if not faults.explain(error):
            raise
        parser.exit(1, f"{parser.prog}: error: {faults.explain(error)}\n")


def _write(args) -> list[Path]:
    if not args.server_timeout_s > 0:  # also NaN
        raise ConfigError(f"--server-timeout-s {args.server_timeout_s:g} is refused: it must be above 0, e.g. 30")
    stores.check_to_read(args.tracking_uri, "--tracking-uri", args.server_timeout_s)
    if args.out:
        stores.check_writable(args.out, "--out", str(args.out), "--out /tmp/report")
    client = MlflowClient(args.tracking_uri)
    lifecycle.reap_expired(client)  # first, runs whose process died end KILLED
    reports = stores.PROJECT_ROOT / "reports"
    if args.compare_activations:
        fig = report.compare_activations(client, *args.compare_activations, args.layer)
        path = (args.out or reports / "-".join(r[:8] for r in args.compare_activations)) / f"activations_{args.layer}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plots.plt.close(fig)
        print(f"wrote {path}")
        return [path]
    if args.parent:
        built, out = report.build_report(client, args.parent), args.out or reports / args.parent
    else:
        title = f"Report: experiment {args.experiment}" + (f" where {args.filter}" if args.filter else "")
        built = report.report_from_runs(client, report.experiment_runs(client, args.experiment, args.filter), title)
        out = args.out or reports / args.experiment
    try:
        print(built.markdown)
        written = report.save(built, out)
    finally:
        built.close()
    print(f"wrote {len(written)} files to {out}")
    return written
