"""The import graph points down only: data, modules -> lib -> stages -> entry points.

Reads every module's imports (top-level and inside functions) with `ast`, nothing is
imported, and fails naming each import of a higher layer from a lower one.
"""

import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "flam_jax")

# Layer of each flam_jax subpackage/module; a module may import its own layer or lower.
LAYERS = {
    "flam_jax": 0,  # The package's __init__ only.
    "flam_jax.errors": 0,
    "flam_jax.data": 1,
    "flam_jax.modules": 1,
    "flam_jax.lib": 2,
    "flam_jax.stages": 3,
    # Entry points: the command lines and what only they use.
    "flam_jax.cli": 4,
    "flam_jax.train": 4,
    "flam_jax.evaluate": 4,
    "flam_jax.generate": 4,
}
# data and modules are independent of each other.
INDEPENDENT = {("flam_jax.data", "flam_jax.modules"), ("flam_jax.modules", "flam_jax.data")}


def _group(module: str):
  """The LAYERS key a dotted module name belongs to, or None outside flam_jax."""
  for key in sorted(LAYERS, key=len, reverse=True):
    if module == key or (key != "flam_jax" and module.startswith(key + ".")):
      return key
  return None


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str, module: str):
  """(line, imported module) of every import statement in the file."""
  tree = ast.parse(open(path).read(), path)
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative import.
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      for alias in node.names:
        yield node.lineno, f"{base}.{alias.name}"


def _sources():
  for directory, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      if name.endswith(".py"):
        yield os.path.join(directory, name)


def violations():
  """Every import of a higher layer (or a sibling independent one) from a lower one."""
  found = []
  for path in _sources():
    module = _module_name(path)
    own = _group(module)
    assert own is not None, f"{module} has no layer; add it to LAYERS in {__file__}"
    for line, imported in _imports(path, module):
      other = _group(imported)
      if other is None:
        continue
      if LAYERS[other] > LAYERS[own] or (own, other) in INDEPENDENT:
        found.append(f"{os.path.relpath(path, ROOT)}:{line} ({own}, layer {LAYERS[own]}) "
                     f"imports {imported} ({other}, layer {LAYERS[other]})")
  return found


def test_imports_point_down():
  assert not violations(), "imports that point up:\n" + "\n".join(violations())


def test_check_catches_an_upward_import(tmp_path, monkeypatch):
  """The check itself: a lib module importing a stage is reported."""
  lib = tmp_path / "flam_jax" / "lib"
  lib.mkdir(parents=True)
  (tmp_path / "flam_jax" / "__init__.py").write_text("")
  (lib / "bad.py").write_text("def f():\n  from flam_jax.stages import lam\n")
  monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
  monkeypatch.setattr(sys.modules[__name__], "PACKAGE", str(tmp_path / "flam_jax"))
  found = violations()
  assert len(found) == 1 and "flam_jax/lib/bad.py:2" in found[0] and "stages" in found[0]


if __name__ == "__main__":
  pytest.main([__file__])
