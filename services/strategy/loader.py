"""Finding a strategy class by its `kind`: a built-in name, a trader's file, or an importable module.

`kind` in a strategy's TOML table is one of

- a built-in kind: `cascade_fade`, `trend`, `imbalance` (`-` and `_` alike);
- `path/to/file.py:ClassName`: a file anywhere (outside the project tree is the point), the path
  relative to the TOML file's folder or absolute;
- `package.module:ClassName`: a module on the Python path (installed, or on `PYTHONPATH`).

Whatever goes wrong — no such file, a syntax error, an import error inside it, no such class, a
class that is not a strategy or declares parameters that cannot be read from TOML — is a
`StrategyConfigError` naming the file and the problem, never a traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
import traceback
import typing
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

from .domain import Strategy, StrategyConfig
from .strategies import KINDS

SUPPORTED_TYPES = "Decimal, float, int, bool, str, tuple[str, ...] (symbols) or Mapping[str, Decimal] (per symbol)"
USER_MODULE_PREFIX = "bulwark_user_strategy"


class StrategyConfigError(ValueError):
    """The strategy configuration cannot be used; the message says what to change."""


def is_path_kind(kind: str) -> bool:
    """Whether `kind` names a class (`file.py:Class` or `module:Class`) rather than a built-in kind."""
    return ":" in kind


def builtin_kind(kind: str) -> str | None:
    """The built-in kind `kind` names (`cascade-fade` → `cascade_fade`), or None."""
    name = kind.replace("-", "_")
    return name if name in KINDS else None


def load_strategy_class(kind: str, base_dir: Path | None = None) -> type[Strategy]:
    """The strategy class `kind` names, checked to be a usable strategy.

    Args:
        kind: a built-in kind, `path/to/file.py:ClassName` or `package.module:ClassName`.
        base_dir: the folder a relative file path is relative to (the TOML file's; default: cwd).

    Raises:
        StrategyConfigError: the kind cannot be loaded, or its class is not a usable strategy.
    """
    builtin = builtin_kind(kind)
    if builtin is not None:
        return KINDS[builtin][0]
    if not is_path_kind(kind):
        raise StrategyConfigError(
            f"unknown kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}, "
            "or your own class as 'path/to/file.py:ClassName' or 'package.module:ClassName'"
        )
    target, _, class_name = kind.rpartition(":")
    if not target or not class_name.isidentifier():
        raise StrategyConfigError(f"kind {kind!r}: expected 'path/to/file.py:ClassName' or 'package.module:ClassName'")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        where = str(path.resolve())
        module = _load_file(path.resolve())
    else:
        where = target
        module = _import_module(target)
    found = getattr(module, class_name, None)
    if found is None:
        classes = sorted(
            name for name, value in vars(module).items() if isinstance(value, type) and issubclass(value, Strategy)
        )
        hint = f"; strategy classes there: {', '.join(classes)}" if classes else ""
        raise StrategyConfigError(f"{where}: no class {class_name!r}{hint}")
    check_strategy_class(found, f"{where}:{class_name}")
    return typing.cast(type[Strategy], found)


def check_strategy_class(found: object, where: str) -> None:
    """Refuse what is not a usable strategy class (and parameters TOML cannot give).

    Raises:
        StrategyConfigError: naming `where` and the problem.
    """
    if not isinstance(found, type) or not issubclass(found, Strategy):
        raise StrategyConfigError(
            f"{where} is not a strategy: it must be a class deriving from services.strategy.sdk.Strategy"
        )
    if found is Strategy:
        raise StrategyConfigError(f"{where} is the SDK's base class itself; name your subclass")
    params = getattr(found, "config_class", None)
    if not isinstance(params, type) or not issubclass(params, StrategyConfig) or not dataclasses.is_dataclass(params):
        raise StrategyConfigError(
            f"{where}: config_class must be a StrategyConfig subclass declared with @sdk.parameters, got {params!r}"
        )
    for name, hint in parameter_hints(params, where).items():
        if not supported_type(hint):
            raise StrategyConfigError(f"{where}: parameter {name!r} has type {hint}; a parameter is {SUPPORTED_TYPES}")


def parameter_hints(params: type[StrategyConfig], where: str) -> dict[str, Any]:
    """Each declared parameter's type.

    Raises:
        StrategyConfigError: a type annotation cannot be resolved.
    """
    try:
        hints = typing.get_type_hints(params)
    except Exception as exc:  # a user's annotation can fail in any way; say which
        raise StrategyConfigError(f"{where}: parameter types of {params.__name__} cannot be read: {exc}") from exc
    return {f.name: hints[f.name] for f in dataclasses.fields(params)}


def supported_type(hint: Any) -> bool:
    """Whether a TOML value can be read as `hint` (`config._convert`)."""
    if hint in (Decimal, float, int, bool, str):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return args == (str, Ellipsis)
    return origin in (Mapping, dict) and args == (str, Decimal)


def _load_file(path: Path) -> ModuleType:
    if path.suffix != ".py":
        raise StrategyConfigError(f"{path}: a strategy file must be a .py file")
    if not path.is_file():
        raise StrategyConfigError(f"{path}: no such strategy file")
    # One module per file, named after its full path: a second load (check, then build) gets the
    # same classes, and two files called strategy.py never replace each other.
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"{USER_MODULE_PREFIX}_{path.stem if path.stem.isidentifier() else 'file'}_{digest}"
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise StrategyConfigError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Its own folder first on the path, so that it can import the helper modules beside it.
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.append(folder)
    sys.modules[module_name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[module_name]
        raise StrategyConfigError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from exc
    except Exception as exc:  # the file's top level is user code: any failure is a config error
        del sys.modules[module_name]
        raise StrategyConfigError(f"{path}: failed to load: {_where_raised(exc, path)}") from exc
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise StrategyConfigError(f"module {name!r} not found (is it installed or on PYTHONPATH?)") from exc
        raise StrategyConfigError(f"module {name!r} failed to import: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # the module's top level is user code
        raise StrategyConfigError(f"module {name!r} failed to import: {type(exc).__name__}: {exc}") from exc


def _where_raised(exc: BaseException, path: Path) -> str:
    # The line of the user's file the error came from (not the loader's own frames).
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == str(path)]
    at = f"line {lines[-1]}: " if lines else ""
    return f"{at}{type(exc).__name__}: {exc}"
