"""Imports point one way: no cycle among metricjax's modules, and no module
imports from a layer above its own.

Every import is read with `ast`, at module level and inside functions (an
import inside a function is still a dependency; hiding a cycle there is
what this test exists to stop). Optional third-party packages imported
lazily are not metricjax modules and are not checked.
"""

import ast
import dataclasses
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "metricjax"

# The layers, lowest first. A module may import from its own layer and the
# layers below it, never from one above. Entries name a top-level module or
# package of metricjax/ (a package covers everything under it). A new
# top-level module must be added here, to the lowest layer that holds what
# it imports.
LAYERS = (
    ("utilities", (
        "errors", "files", "config_utils", "parallel", "failures",
        "inference",  # Batched, sharded apply over host arrays.
        "state", "checkpoint",  # The train state and its Orbax files.
        "artifact",  # The exported-model file format.
        "xla_routing",  # XLA:CPU compiler options per jitted function.
        "host_memory",  # glibc malloc settings for XLA:CPU's buffers.
        "accelerators",  # TPU and GPU targets for deviceless compilation.
        "hlo_costs",  # Flops and bytes of a compiled program.
        "metric_writers",  # metrics.jsonl and TensorBoard events.
    )),
    ("ops", ("ops",)),
    ("losses / data / models", (
        "losses", "data", "models",
        "text",  # Caption tokens and vocabulary (data and the VSE task).
        "fne",  # Backbone features of a VGG (models.vgg).
    )),
    ("metrics", (
        "metrics", "clustering",
        "rerank",  # Re-ranking at evaluation: k-reciprocal, query expansion.
    )),
    ("tasks", (
        "tasks",
        "config_check",  # validate(config): the base config and the tasks' rules.
    )),
    ("restore", ("restore",)),
    ("train / evaluate", (
        "train", "evaluate",
        "step",  # The training step.
        "cli",  # Flags and logging shared by every command line.
        "aot",  # The training step compiled for other machines.
    )),
    ("search / export", (
        "embedder",  # Images -> embeddings, from a checkpoint or an artifact.
        "index", "export",
        "onnx_export",  # The embedding net as an ONNX graph (jax2onnx).
    )),
    ("command lines and runners", ("search", "study", "study_plots", "__init__")),
)
# Above every layer of the library; it never imports them.
OUTSIDE = ("experiments", "tools", "tests", "configs")


@dataclasses.dataclass(frozen=True)
class Import:
  path: pathlib.Path  # The importing file.
  line: int
  source: str  # Dotted module names, e.g. "metricjax.data.sources".
  target: str

  def where(self, root: pathlib.Path) -> str:
    return f"{self.path.relative_to(root.parent)}:{self.line}"


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = path.relative_to(root.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_exists(name: str, root: pathlib.Path) -> bool:
  base = root.parent.joinpath(*name.split("."))
  return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(node, module: str, is_package: bool, root) -> list[str]:
  """The metricjax modules (and outside packages) an import statement loads.

  `from pkg import name` loads pkg.name when that is a module, else the
  package `pkg` itself (name is defined in its __init__). The implicit
  import of parent packages is not counted: it would make every package's
  __init__ part of a cycle with the submodules it re-exports.
  """
  top = root.name
  if isinstance(node, ast.Import):
    return [a.name for a in node.names
            if a.name.split(".")[0] in (top, *OUTSIDE)]
  if node.level:  # Relative: from the importing module's package.
    package = module.split(".")
    package = package if is_package else package[:-1]
    base = ".".join(package[:len(package) - node.level + 1] +
                    ([node.module] if node.module else []))
  else:
    base = node.module or ""
  if base.split(".")[0] not in (top, *OUTSIDE):
    return []
  if base.split(".")[0] in OUTSIDE:
    return [base]
  targets = []
  for alias in node.names:
    sub = f"{base}.{alias.name}"
    targets.append(sub if module_exists(sub, root) else base)
  return targets


def imports(root: pathlib.Path = ROOT) -> list[Import]:
  """Every import of a metricjax module (or of experiments/tools) in root."""
  found = []
  for path in sorted(root.rglob("*.py")):
    module = module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for target in _resolve(node, module, path.name == "__init__.py", root):
          if target != module:
            found.append(Import(path, node.lineno, module, target))
  return found


def layer_of(module: str, layers=LAYERS) -> int | None:
  """Index in `layers` of a dotted module name; None when in no layer."""
  parts = module.split(".")
  entry = parts[1] if len(parts) > 1 else "__init__"
  for i, (_, entries) in enumerate(layers):
    if entry in entries:
      return i
  return None


def unplaced(root: pathlib.Path = ROOT, layers=LAYERS) -> list[str]:
  names = {p.stem if p.suffix == ".py" else p.name
           for p in root.iterdir()
           if (p.suffix == ".py" or (p / "__init__.py").is_file())}
  return sorted(n for n in names
                if layer_of(f"{root.name}.{n}", layers) is None)


def upward(found: list[Import], root: pathlib.Path = ROOT,
           layers=LAYERS) -> list[str]:
  """One message per import of a higher layer or of a missing module."""
  problems = []
  for imp in found:
    where = imp.where(root)
    if imp.target.split(".")[0] in OUTSIDE:
      problems.append(f"{where}: {imp.source} imports {imp.target}; the "
                      f"library never imports {', '.join(OUTSIDE)}.")
      continue
    if not module_exists(imp.target, root):
      problems.append(f"{where}: {imp.source} imports {imp.target}, which "
                      "does not exist (renamed or removed? metricjax.io is "
                      "now metricjax.files).")
      continue
    src, dst = layer_of(imp.source, layers), layer_of(imp.target, layers)
    if src is None or dst is None:
      continue  # Reported by the unplaced check.
    if dst > src:
      problems.append(
          f"{where}: {imp.source} (layer {layers[src][0]!r}) imports "
          f"{imp.target} (layer {layers[dst][0]!r}, higher). A module may "
          "import only from its own layer and those below: move the shared "
          "code down, or this code up (layers: LAYERS in "
          "tests/test_layers.py).")
  return problems


def cycles(found: list[Import], root: pathlib.Path = ROOT) -> list[str]:
  """One message per import cycle, naming each import of it (file:line)."""
  graph: dict[str, dict[str, Import]] = {}
  for imp in found:
    graph.setdefault(imp.source, {}).setdefault(imp.target, imp)
  # Tarjan's strongly connected components, iteratively.
  index, low, stack, on_stack, components = {}, {}, [], set(), []
  for start in sorted(graph):
    if start in index:
      continue
    work = [(start, iter(sorted(graph.get(start, {}))))]
    index[start] = low[start] = len(index)
    stack.append(start)
    on_stack.add(start)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph.get(child, {})))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = set()
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.add(member)
          if member == node:
            break
        if len(component) > 1:
          components.append(component)
  problems = []
  for component in components:
    path = _a_cycle(graph, component)
    steps = "; ".join(
        f"{graph[a][b].where(root)} imports {b}"
        for a, b in zip(path, path[1:]))
    problems.append(f"Import cycle {' -> '.join(path)}: {steps}. Break it by "
                    "moving what both need into a lower module; an import "
                    "inside a function does not break it.")
  return problems


def _a_cycle(graph, component) -> list[str]:
  """A shortest closed path from the component's first module back to it."""
  start = min(component)
  parents, frontier = {start: None}, [start]
  while frontier:
    following = []
    for node in frontier:
      for child in sorted(graph.get(node, {})):
        if child == start:
          path = [node]
          while parents[path[-1]] is not None:
            path.append(parents[path[-1]])
          return [*reversed(path), start]
        if child in component and child not in parents:
          parents[child] = node
          following.append(child)
    frontier = following
  raise AssertionError(f"{sorted(component)} is not a cycle")


# --- The library -------------------------------------------------------------


def test_every_module_is_in_a_layer():
  missing = unplaced()
  assert not missing, (
      f"metricjax/ has {', '.join(missing)} in no layer. Add each to the "
      "layer it belongs to in LAYERS of tests/test_layers.py (lowest first; "
      "a module may import from its own layer and those below).")


def test_no_module_imports_from_a_higher_layer():
  problems = upward(imports())
  assert not problems, "\n".join(problems)


def test_no_import_cycle():
  problems = cycles(imports())
  assert not problems, "\n".join(problems)


def test_the_walk_sees_the_known_imports():
  # Guards against a walk that silently finds nothing.
  edges = {(i.source, i.target) for i in imports()}
  assert ("metricjax.search", "metricjax.index") in edges
  assert ("metricjax.metrics", "metricjax.ops.knn") in edges
  assert ("metricjax.losses.circle", "metricjax.losses.pairs") in edges
  assert ("metricjax.tasks.retrieval", "metricjax.data") in edges


# --- The checks themselves, on a made-up package -----------------------------


def _package(tmp_path, files: dict[str, str]) -> pathlib.Path:
  root = tmp_path / "metricjax"
  for name, text in {"__init__.py": "", **files}.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return root


def test_a_cycle_through_a_function_import_is_found(tmp_path):
  root = _package(tmp_path, {
      "a.py": "from metricjax import b\n",
      "b.py": "def f():\n  from metricjax.c import thing\n",
      "c.py": "import os\nimport metricjax.a\n",
      "d.py": "from metricjax import a\n",  # Into the cycle, not part of it.
  })
  (problem,) = cycles(imports(root), root)
  assert problem.startswith(
      "Import cycle metricjax.a -> metricjax.b -> metricjax.c -> metricjax.a:")
  assert "metricjax/b.py:2 imports metricjax.c" in problem
  assert "metricjax/d.py" not in problem


def test_an_upward_import_names_the_file_line_and_layers(tmp_path):
  layers = (("low", ("data", "files")), ("high", ("search", "__init__")))
  root = _package(tmp_path, {
      "data/__init__.py": "",
      "data/sources.py": "import json\n\nfrom metricjax import search\n",
      "search.py": "from metricjax.data import sources\n"
                   "from metricjax.io import atomic_write\n",
      "files.py": "from .data import sources\n",  # Relative, same layer.
      "stray.py": "",
  })
  problems = upward(imports(root), root, layers)
  assert len(problems) == 2, problems
  assert problems[0].startswith(
      "metricjax/data/sources.py:3: metricjax.data.sources (layer 'low') "
      "imports metricjax.search (layer 'high', higher).")
  assert problems[1].startswith("metricjax/search.py:2: metricjax.search "
                                "imports metricjax.io, which does not exist")
  assert unplaced(root, layers) == ["stray"]


@pytest.mark.parametrize("statement, target", [
    ("from metricjax.data import sources", "metricjax.data.sources"),
    ("from metricjax.data import load_dataset", "metricjax.data"),
    ("import metricjax.data.sources as s", "metricjax.data.sources"),
    ("from . import sources", "metricjax.data.sources"),
])
def test_imports_resolve_to_modules(tmp_path, statement, target):
  root = _package(tmp_path, {"data/__init__.py": "",
                             "data/sources.py": "",
                             "data/user.py": statement + "\n"})
  assert [(i.source, i.target) for i in imports(root)] == [
      ("metricjax.data.user", target)]
