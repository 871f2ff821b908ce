"""The package's structure: each part imports only the parts in the layers below its own (LAYERS, as
README's Layout states it), modules import each other in no cycle (counting imports inside functions and
under TYPE_CHECKING), training never loads the reporting side, and the analysis leaves import no torch."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "normexp"

# Top to bottom; a part (a sub-package, or a module directly under normexp/) may import the parts of
# the layers below its own, and the modules of its own sub-package.
LAYERS = [
    ("answers", "search", "scratch", "sweep_report"),  # the commands, and the reports that end sweeps
    ("report", "stable_lr"),                        # reports from runs (`python -m normexp.report` too); the
                                                    # search's study, bracket and workers
    ("train",),                                     # run(cfg): the one function that trains
    ("training", "probes"),                         # the LightningModule, callbacks, checkpoints; probes
    ("tracking",),                                  # stores, runs, the metrics logger, sweeps, commands
    ("models", "analysis"),                         # networks and norms; results, statistics, tables, plots
    ("data", "threads"),                            # data sets as tensors; CPU threads per job
    ("config",),                                    # the config schema, each value's domain
    ("errors",),
]


def modules_of(package: Path) -> dict[str, Path]:
    """Dotted module name (below the package) -> file: 'tracking.runs', 'train'."""
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            found[name] = path
    return found


def imports_of(path: Path, root: str, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in its text (dotted, below the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == root:
            base = node.module.removeprefix(root).lstrip(".")
            submodules = {f"{base}.{alias.name}".strip(".") for alias in node.names} & modules
            found |= submodules or {base}  # `from normexp.x import y`: module x.y, else a name in x
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix(root + ".") for alias in node.names if alias.name.startswith(root + ".")}
    return found & modules


def import_graph(package: Path) -> dict[str, set[str]]:
    modules = modules_of(package)
    return {name: imports_of(path, package.name, set(modules)) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with the path on a stack)."""
    done, path = set(), []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            if cycle := visit(imported):
                return cycle
        path.pop()
        done.add(module)
        return None

    return next((cycle for module in sorted(graph) if (cycle := visit(module))), None)


def layer_breaks(graph: dict[str, set[str]], layers: list[tuple[str, ...]]) -> list[str]:
    """'a.x imports b.y' for each import that goes up or sideways between parts, or into a part no layer names."""
    level = {part: i for i, parts in enumerate(layers) for part in parts}
    breaks = []
    for module, imported in sorted(graph.items()):
        part = module.split(".")[0]
        for target in sorted(imported):
            other = target.split(".")[0]
            if other == part:
                continue
            if part not in level or other not in level or level[other] <= level[part]:
                breaks.append(f"{module} imports {target}")
    return breaks


def write_package(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_an_upward_import_and_a_cycle_are_found(tmp_path):
    fake = write_package(tmp_path / "fake", {
        "__init__.py": "", "top.py": "from fake.low import leaf\n",
        "low/__init__.py": "", "low/leaf.py": "def f():\n    from fake import top  # upward, and a cycle\n",
        "low/other.py": "from fake.low import leaf\n"})
    graph = import_graph(fake)
    assert layer_breaks(graph, [("top",), ("low",)]) == ["low.leaf imports top"]
    assert find_cycle(graph) == ["low.leaf", "top", "low.leaf"]
    assert layer_breaks(graph, [("top", "low")]) == ["low.leaf imports top", "top imports low.leaf"]  # sideways
    assert layer_breaks(graph, [("top",)]) == ["low.leaf imports top", "top imports low.leaf"]  # unplaced part


def test_the_package_keeps_its_layer_order_and_has_no_cycle():
    graph = import_graph(PACKAGE)
    assert layer_breaks(graph, LAYERS) == []
    assert find_cycle(graph) is None


def test_training_loads_no_reporting():
    code = "import sys, normexp.train; print(sorted(m for m in sys.modules if m.startswith(('normexp.report', " \
           "'normexp.answers', 'normexp.analysis.comparisons', 'normexp.analysis.verdicts'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_names_tables_and_statistics_import_no_torch():
    code = "import sys, normexp.analysis.comparisons, normexp.analysis.histograms; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
