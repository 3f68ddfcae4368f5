"""What the deployment files must agree with, read from the services' own sources."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
# Each service's gRPC port (its <SVC>_LISTEN in a container is 0.0.0.0:<port>).
PORTS = {"gateway": 50051, "generator": 50052, "swapper": 50053}
# Variables read by libraries or the Python runtime rather than by facegen's settings.
LIBRARY_ENV = frozenset({"HOME", "HF_HOME", "HF_HUB_OFFLINE", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"})


def service_modules(service: str, exclude: frozenset[Path] = frozenset()) -> list[Path]:
    """The files of ``services/<service>`` plus every first-party module they import, transitively
    (``exclude``: files to leave out, with what only they import)."""
    pending = sorted((REPO / "services" / service).rglob("*.py"))
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen or path in exclude:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            if module.split(".")[0] in {"services", "facegen"}:
                pending.extend(_module_files(module))
    return sorted(seen)


def imported_at_start(service: str) -> dict[Path, list[str]]:
    """The files importing ``services/<service>``'s modules loads (module-level imports only, transitively),
    each with the modules it imports at its module level."""
    pending = sorted((REPO / "services" / service).rglob("*.py"))
    found: dict[Path, list[str]] = {}
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found[path] = top_level_imports(path)
        for module in found[path]:
            if module.split(".")[0] in {"services", "facegen"}:
                pending.extend(_module_files(module))
    return found


def _module_files(module: str) -> list[Path]:
    root = REPO / "protos" if module.startswith("facegen") else REPO
    base = root.joinpath(*module.split("."))
    candidates = [base.with_suffix(".py"), base / "__init__.py"]
    return [path for path in candidates if path.is_file()]


def _imported_modules(path: Path, include_type_checking: bool = False) -> list[str]:
    """Absolute module names imported by ``path`` (imports inside functions included)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    if not include_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    modules: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
            modules.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def top_level_imports(path: Path) -> list[str]:
    """Modules that ``path`` imports when it is itself imported (not inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    modules: list[str] = []
    for stmt in tree.body:
        nodes = [stmt] if not isinstance(stmt, ast.Try | ast.If) else list(ast.walk(stmt))
        for node in nodes:
            if isinstance(node, ast.Import):
                modules.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.append(node.module)
                modules.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


@functools.cache
def packages_distributions() -> dict[str, list[str]]:
    """Top-level module → distributions (slow: reads every installed RECORD, so once).

    The packages a distribution's files hold count too, beside what its ``top_level.txt`` declares:
    dlib-bin declares only ``_dlib_pybind11`` but installs the ``dlib`` package.
    """
    found = {module: list(dists) for module, dists in importlib.metadata.packages_distributions().items()}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        for file in dist.files or ():
            if len(file.parts) > 1 and file.name == "__init__.py" and name not in found.setdefault(file.parts[0], []):
                found[file.parts[0]].append(name)
    return found


@functools.cache
def _owner(module: str, candidates: tuple[str, ...]) -> list[str]:
    """The distribution among ``candidates`` whose files hold ``module`` (for a namespace package such as
    ``opentelemetry``, which many distributions share): the longest dotted prefix that one of them installs."""
    parts = module.split(".")
    files = {name: {str(path) for path in importlib.metadata.distribution(name).files or ()} for name in candidates}
    for length in range(len(parts), 1, -1):
        stem = "/".join(parts[:length])
        owners = [name for name, paths in files.items() if f"{stem}.py" in paths or f"{stem}/__init__.py" in paths]
        if owners:
            return owners
    # The namespace itself (``from opentelemetry import trace`` lists ``opentelemetry`` too) is nobody's.
    return [] if len(parts) == 1 else list(candidates)


def third_party_distributions(service: str, exclude: frozenset[Path] = frozenset()) -> dict[str, set[str]]:
    """Distribution → the modules of ``service`` that import it (stdlib and first party left out)."""
    by_module = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in service_modules(service, exclude):
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in {"services", "facegen", "__future__"}:
                continue
            dists = by_module.get(top)
            if not dists:
                # A submodule name (``from PIL import Image`` lists ``PIL.Image`` too) or an
                # uninstalled package: report the top level, which is what must be installed.
                dists = [f"<not installed: {top}>"]
            if top == "google":
                dists = ["protobuf"] if module.startswith("google.protobuf") else dists
            elif len(dists) > 1:
                dists = _owner(module, tuple(sorted(set(dists))))
            for dist in dists:
                found.setdefault(str(canonicalize_name(dist)), set()).add(
                    str(path.relative_to(REPO)))
    return found


@functools.cache
def dependency_closure(distributions: frozenset[str]) -> frozenset[str]:
    """``distributions`` and everything they require (per the installed metadata, on this platform)."""
    result: set[str] = set()
    pending = [(str(canonicalize_name(name)), frozenset[str]()) for name in distributions]
    while pending:
        name, extras = pending.pop()
        key = name if not extras else f"{name}[{','.join(sorted(extras))}]"
        if key in result:
            continue
        result.add(key)
        result.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requirements:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is not None and not any(
                    requirement.marker.evaluate(env) for env in environments):
                continue
            pending.append((str(canonicalize_name(requirement.name)), frozenset(requirement.extras)))
    return frozenset(name for name in result if "[" not in name)


def pinned_names(constraints: Path) -> set[str]:
    """Canonical names pinned with == in a constraints file."""
    names = set()
    for line in constraints.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            names.add(str(canonicalize_name(line.split("==")[0])))
    return names


def _direct_reads(path: Path) -> set[str]:
    """Variables a module reads itself: ``os.environ["X"]``, ``os.environ.get("X")``, ``os.getenv("X")``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        target = None
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            target = node.slice
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in {"os.environ.get", "os.getenv"} and node.args:
            target = node.args[0]
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            names.add(target.value)
    return names


@functools.cache
def known_env_vars(service: str) -> frozenset[str]:
    """Every variable that ``service`` can read: what its settings class reads (``env_names()``: each field's
    name or aliases, ``NAME_FILE`` of secrets, its groups'), what its modules read from ``os.environ`` directly,
    and what the libraries and Python read."""
    settings = importlib.import_module(f"services.{service}.settings").Settings
    names = set(LIBRARY_ENV) | set(settings.env_names())
    for path in service_modules(service):
        names |= _direct_reads(path)
    return frozenset(names)
