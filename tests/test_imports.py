"""The package's import structure (issue 9): no import circle, layers that only look down,
one module that talks to MPI (the transport) and one that imports CuPy.

Every ``import`` statement of every module counts, at module level or inside a function:
a circle hidden in a function is still a circle.
"""

import ast
import os
from pathlib import Path

import mpcgpu

ROOT = Path(mpcgpu.__file__).resolve().parent
PKG = "mpcgpu"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level:
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))
    return module or ""


def _exists(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph():
    """``{module: {imported mpcgpu modules}}`` from every import statement."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = _resolve(name, is_package, node.level, node.module)
                targets = [f"{mod}.{a.name}" if _exists(f"{mod}.{a.name}") else mod for a in node.names]
            else:
                continue
            for t in targets:
                if t == PKG or t.startswith(PKG + "."):
                    while t and not _exists(t):
                        t = t.rpartition(".")[0]
                    if t and t != name:
                        edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_circle_inside_the_package():
    graph = import_graph()
    assert len(graph) > 30
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_circles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_only_look_down():
    """ring knows nothing of sharing; sharing nothing of protocols or nn; protocols nothing of nn."""
    graph = import_graph()
    forbidden = {
        "mpcgpu.ring.products": ("mpcgpu.sharing", "mpcgpu.protocols", "mpcgpu.nn", "mpcgpu.data", "mpcgpu.jobs"),
        "mpcgpu.ring.limbs": ("mpcgpu.sharing", "mpcgpu.protocols", "mpcgpu.nn"),
        "mpcgpu.sharing": ("mpcgpu.protocols", "mpcgpu.nn", "mpcgpu.data", "mpcgpu.jobs"),
        "mpcgpu.protocols": ("mpcgpu.nn", "mpcgpu.data", "mpcgpu.jobs"),
        "mpcgpu.nn": ("mpcgpu.jobs",),
        "mpcgpu.data": ("mpcgpu.jobs",),
    }
    for module, edges in graph.items():
        for prefix, banned in forbidden.items():
            if module == prefix or module.startswith(prefix + "."):
                bad = [e for e in edges if e.startswith(banned)]
                assert not bad, f"{module} imports {bad}"


#: the folders of mpcgpu from the bottom up (issue 19): a module imports only from its own
#: floor or the floors below (``mpcgpu`` is the package's own ``__init__``, the public face)
FLOORS = [
    ("errors", "_version", "settings"),
    ("util", "device"),
    ("ring", "crypto", "comm", "reporting", "assets"),
    ("kernelsets",),
    ("runtime",),
    ("sharing",),
    ("protocols", "mpcgpu"),
    ("nn",),
    ("data", "interop"),
    ("models_io",),
    ("jobs", "cli"),
]


def _floor_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "mpcgpu"
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(f"{module}: a folder or module of mpcgpu that FLOORS does not place")


def test_every_folder_imports_only_from_its_floor_or_below():
    graph = import_graph()
    up = sorted(f"{m} -> {e}" for m, edges in graph.items() for e in edges if _floor_of(e) > _floor_of(m))
    assert not up, "imports that run up the floors: " + "; ".join(up)


def test_the_floor_check_sees_an_upward_import():
    assert _floor_of("mpcgpu.ring.products") < _floor_of("mpcgpu.sharing.arithmetic")
    assert _floor_of("mpcgpu.comm.transport") < _floor_of("mpcgpu.runtime")


def test_only_transport_talks_to_mpi_and_only_backend_imports_cupy():
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        rel = os.fspath(path.relative_to(ROOT))
        if "mpi4py" in names:
            assert rel == os.path.join("comm", "transport.py"), f"{rel} imports mpi4py"
        if "cupy" in names:
            assert rel == os.path.join("device", "backend.py"), f"{rel} imports cupy"


#: modules of mpcgpu.jobs that serve several jobs (not jobs themselves)
JOB_HELPERS = {"mpcgpu.jobs.channel_args", "mpcgpu.jobs.checks", "mpcgpu.jobs.launcher"}


def test_every_command_is_a_job_and_no_job_imports_another():
    """Library below, command line on top (issue 19): each subcommand's module is in
    mpcgpu.jobs, the library below it carries no command-line code, and a job uses the
    library and the shared helpers, never another job."""
    from mpcgpu.cli import COMMANDS

    graph = import_graph()
    jobs = set(COMMANDS.values())
    assert all(m.startswith("mpcgpu.jobs.") and m not in JOB_HELPERS for m in jobs)
    for module in jobs:
        assert not graph[module] & (jobs - {module}), f"{module} imports {sorted(graph[module] & jobs)}"
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        if name.startswith("mpcgpu.jobs") or name in ("mpcgpu.cli", "mpcgpu.nn.train_plain"):
            continue  # (train_plain: the maintainers' `python -m` script that trained the bundled LeNet)
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "argparse" not in imported, f"{name} imports argparse (command-line code belongs in mpcgpu.jobs)"
