"""The package's architecture stays readable: no import cycles between its modules."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules():
    """``{module name: source file}`` of the package (``dataset_conversion`` is installed inside it)."""
    modules = {}
    for base, prefix in ((ROOT / "nnunetv2_ciml", "nnunetv2_ciml"),
                         (ROOT / "dataset_conversion", "nnunetv2_ciml.dataset_conversion")):
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            name = ".".join((prefix, *parts))
            modules[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return modules


def _imports(name: str, path: Path, modules) -> set:
    """The package modules ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rsplit(".", 1)[0]
            target = (base + ("." + node.module if node.module else "")) if node.level else (node.module or "")
            candidates = [target, *(f"{target}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules and c != name)
    return found


def test_no_module_imports_itself_through_others():
    """Fails on any import cycle, direct (a imports b imports a) or through other modules, including imports
    inside functions (the demo's pipeline and report once imported each other that way)."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    done, on_path, cycles = set(), [], []

    def visit(node: str) -> None:
        if node in on_path:
            cycles.append(on_path[on_path.index(node):] + [node])
            return
        if node in done:
            return
        on_path.append(node)
        for target in sorted(graph[node]):
            visit(target)
        on_path.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)
    assert len(modules) > 50 and cycles == []
