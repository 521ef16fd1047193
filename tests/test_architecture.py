"""The package reads as a one-way street (docs/ARCHITECTURE.md, "Dependencies"): each module
imports only from its own package or from lower layers; the library never imports the CLI;
the pipeline and the evaluation harness never import each other."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "clinfuse"

# Lower number = lower layer. A module may import its own package and anything lower. The most
# specific prefix wins (report.montage / report.plots draw images from arrays and depend on io
# only, so the pipeline's output folder may use them; the rest of report builds on evaluation).
LAYERS: dict[str, int] = {
    "clinfuse": 0,  # package root: __init__, errors, choices, model_range, _lazy
    "clinfuse.io": 1,
    "clinfuse.preprocess": 2,
    "clinfuse.phantom": 3,  # uses preprocess (masks, resampling) for real-anatomy pairs
    "clinfuse.losses": 2,
    "clinfuse.report.montage": 2,
    "clinfuse.report.plots": 2,
    "clinfuse.metrics": 3,
    "clinfuse.baselines": 3,
    "clinfuse.nn": 3,
    "clinfuse.diffusion": 4,
    "clinfuse.training": 5,
    "clinfuse.pipeline": 6,
    "clinfuse.evaluation": 6,
    "clinfuse.report": 7,
    "clinfuse.demo": 8,
    "clinfuse.cli": 9,
    "clinfuse.__main__": 10,  # `python -m clinfuse`: the CLI entry point
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def _layer(module: str) -> tuple[str, int]:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    if best == "clinfuse" and module.count(".") >= 1 and not _is_root_module(module):
        raise AssertionError(f"{module}: package missing from LAYERS in tests/test_architecture.py")
    return best, LAYERS[best]


def _is_root_module(module: str) -> bool:
    """`clinfuse.errors`, `clinfuse.choices`, ...: a plain module directly in the package."""
    rest = module.split(".", 1)[1] if "." in module else ""
    return "." not in rest and (SRC / f"{rest}.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every clinfuse module a file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "clinfuse":
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "clinfuse")
    # keep only names that are modules or packages (not functions imported from them)
    return {m for m in found if _exists(m)}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:]) if "." in module else Path()
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


MODULES = sorted(p for p in SRC.rglob("*.py"))


def _edges() -> list[tuple[str, str]]:
    return [(_module_name(p), m) for p in MODULES for m in sorted(_imports(p))]


def test_every_package_has_a_layer():
    for path in MODULES:
        _layer(_module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_only(path):
    module = _module_name(path)
    own, rank = _layer(module)
    bad = []
    for target in _imports(path):
        if target == "clinfuse":
            continue  # the package root (version string) is the lowest layer
        t_own, t_rank = _layer(target)
        if t_own == own or (own.startswith(t_own + ".") and t_rank <= rank):
            continue
        if t_rank >= rank:
            bad.append(f"{target} (layer {t_rank} >= {rank})")
    assert not bad, f"{module} (layer {rank}) imports upward or sideways: {bad}"


def test_library_never_imports_the_cli():
    bad = [
        (a, b)
        for a, b in _edges()
        if b.startswith("clinfuse.cli") and not a.startswith(("clinfuse.cli", "clinfuse.__main__"))
    ]
    assert not bad


def test_pipeline_and_evaluation_do_not_import_each_other():
    pairs = [
        ("clinfuse.pipeline", "clinfuse.evaluation"),
        ("clinfuse.evaluation", "clinfuse.pipeline"),
    ]
    for src, dst in pairs:
        bad = [(a, b) for a, b in _edges() if a.startswith(src) and b.startswith(dst)]
        assert not bad, f"{src} imports {dst}: {bad}"


def test_the_checker_sees_function_level_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from clinfuse.cli import main\n")
    assert "clinfuse.cli" in _imports(f)
