"""The code stays ruff-clean (the conventions of DESIGN.md), checked like any other behaviour."""

from __future__ import annotations

import shutil
import subprocess

from conftest import ROOT


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    result = subprocess.run([ruff, "check", "--output-format", "concise", "xend_ext", "xenapi_classes", "tests",
                             "bench", "examples"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path):
    """(module imported, names taken from it) for every import in a file, function bodies included."""
    import ast

    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:  # "from pkg import module" names a module; otherwise a name
                yield (f"{base}.{alias.name}", []) if (ROOT / base.replace(".", "/") / f"{alias.name}.py").exists() \
                    else (base, [alias.name])


def test_class_modules_depend_one_way_on_public_names():
    """Issue 17: the class modules import each other in one direction only (host_cpu, sched_domain ->
    cpu_pool -> VM -> VM_group; the shared rules sit below them in xend_ext/placement.py and
    grouping.py, which import no class module), and no module takes another's private (_x) name."""
    import graphlib

    modules = {}
    for path in [*sorted((ROOT / "xenapi_classes").glob("*.py")), *sorted((ROOT / "xend_ext").rglob("*.py"))]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        graph[name] = set()
        for target, names in _imports(path):
            if target in modules and target != name:
                graph[name].add(target)
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                assert not private, f"{name} imports private {private} from {target}"
    ours = ("xenapi_classes", "xend_ext.placement", "xend_ext.grouping", "xend_ext.cli")
    layered = {n: {t for t in ts if t.startswith(ours)} for n, ts in graph.items() if n.startswith(ours)}
    graphlib.TopologicalSorter(layered).prepare()  # raises CycleError on an import cycle
    for rule in ("xend_ext.placement", "xend_ext.grouping"):
        assert not any(t.startswith("xenapi_classes") for t in graph[rule]), rule
