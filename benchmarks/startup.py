"""CPU seconds a command's process spends importing its modules, with normexp's garbage-collector setting and
with Python's default.

    python benchmarks/startup.py [--repeats 5] [--packages DIR]

Each figure is a fresh `python -c "import normexp; <thresholds>; import normexp.train; ..."` process (what
`python -m normexp.train` imports before Hydra composes its config), its own CPU time (user + system) measured
inside it from the start of `import normexp.train` to after `gc.freeze()` (tracking.commands.freeze_imports,
the first thing a command does). `normexp` sets the thresholds on import (normexp/__init__.py); the "Python's
default" variant puts back the default right after it, before torch, Lightning and MLflow load. `--packages
DIR` adds a variant with DIR first on the import path, to weigh another version of a package, e.g. after
`pip install --no-deps --target /tmp/tm torchmetrics==1.9.0` (pyproject.toml keeps torchmetrics < 1.4). The
variants alternate, so that a machine whose speed drifts hits them alike; printed: min and median of --repeats
each. Run it on an otherwise idle machine.
"""

import argparse
import gc
import os
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "normexp (full passes deferred)": "",
    "Python's default": f"gc.set_threshold{gc.get_threshold()}; ",  # this process has not imported normexp
}
MEASURE = ("import gc, time, normexp; {set_default}start = time.process_time(); import normexp.train; "
           "full = gc.get_stats()[2]['collections']; gc.freeze(); print(time.process_time() - start, full)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="processes per variant (default 5)")
    parser.add_argument("--packages", help="a folder of packages to put first on the import path, as a third variant")
    args = parser.parse_args()
    variants = {name: (set_default, {}) for name, set_default in VARIANTS.items()}  # name -> (code, environment)
    if args.packages:
        versions = "; ".join(sorted(p.name.removesuffix(".dist-info") for p in Path(args.packages).glob("*.dist-info")))
        variants[f"normexp, with {versions or args.packages}"] = ("", {"PYTHONPATH": args.packages})
    seconds = {name: [] for name in variants}
    full_passes = {}
    for _ in range(args.repeats):
        for name, (set_default, environment) in variants.items():
            out = subprocess.run([sys.executable, "-c", MEASURE.format(set_default=set_default)],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, **environment}).stdout.split()
            seconds[name].append(float(out[0]))
            full_passes[name] = int(out[1])
    print(f"{'import normexp.train, then gc.freeze()':<44} {'min s':>6} {'median s':>8}  full GC passes")
    for name, values in seconds.items():
        print(f"{name:<44} {min(values):6.2f} {statistics.median(values):8.2f}  {full_passes[name]}")


if __name__ == "__main__":
    main()
