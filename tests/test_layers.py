"""The layers of docs/ARCHITECTURE.md hold: no geo3d module imports from a layer above its own.

Every ``import`` in ``geo3d/`` is read from the source (those inside functions
too: a lazy import is still a dependency), so a new module must be given a
layer here and in the architecture page before it can land.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "geo3d"

# Lowest first; a module may import from its own layer and the ones before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "core",
        ("geo3d._C", "geo3d._cudasim", "geo3d.version", "geo3d.files", "geo3d.runtime", "geo3d.checkpoint"),
    ),
    ("ops", ("geo3d.ops",)),
    ("o3", ("geo3d.o3",)),
    ("graph", ("geo3d.graph",)),
    ("data", ("geo3d.data",)),
    ("metrics", ("geo3d.metrics",)),
    ("nn", ("geo3d.nn",)),
    ("models", ("geo3d.models",)),
    ("diffusion", ("geo3d.diffusion",)),
    ("registry", ("geo3d.registry",)),
    ("train", ("geo3d.train",)),
    ("apps", ("geo3d.apps", "geo3d.calculators")),
    ("cli", ("geo3d.cli",)),
    ("package", ("geo3d",)),  # geo3d/__init__.py: lazy re-exports of the public names
]


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that owns ``module``."""
    best, best_len = -1, -1
    for k, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = k, len(prefix)
    return best


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    path = ROOT.parent.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file() or any(path.parent.glob(f"{path.name}.*.so"))


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported geo3d module) for every import in the file, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from geo3d import _C` imports a module, `from geo3d import load_model` the package
            found += [
                (node.lineno, f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base)
                for a in node.names
            ]
    return [(line, name) for line, name in found if name == "geo3d" or name.startswith("geo3d.")]


SOURCES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    unplaced = [_module_name(p) for p in SOURCES if layer_of(_module_name(p)) < 0]
    assert not unplaced, (
        f"give these modules a layer in tests/test_layers.py and docs/ARCHITECTURE.md: {unplaced}"
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_no_import_from_a_higher_layer(path):
    module = _module_name(path)
    own = layer_of(module)
    wrong = [
        f"{path.relative_to(ROOT.parent)}:{line} imports {name} ({LAYERS[layer_of(name)][0]} is above "
        f"{LAYERS[own][0]})"
        for line, name in imports_of(path)
        if layer_of(name) > own
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_lazy_relative_and_package_imports(tmp_path):
    # A stand-in module placed in geo3d/ops/ that reaches up three ways.
    probe = ROOT / "ops" / "_layer_probe.py"
    probe.write_text(
        "from . import scatter\n"
        "from ..metrics import molecules\n"
        "def f():\n    from geo3d import load_model\n    import geo3d.models.apen\n"
    )
    try:
        names = [name for _, name in imports_of(probe)]
    finally:
        probe.unlink()
    assert names == ["geo3d.ops.scatter", "geo3d.metrics.molecules", "geo3d", "geo3d.models.apen"]
    assert [layer_of(n) > layer_of("geo3d.ops") for n in names] == [False, True, True, True]


def test_importing_the_kernels_does_not_load_the_models():
    code = "import sys, geo3d.ops; print(sorted(m for m in sys.modules if m.startswith('geo3d.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)  # a list literal printed by the child
    assert loaded and all(layer_of(m) <= layer_of("geo3d.ops") for m in loaded), loaded
