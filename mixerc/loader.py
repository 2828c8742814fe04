"""Finding specs: built-in names (`mixerc.specs`) or paths to ``.py`` files."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import types

from .dsl import Spec, user_code_error
from .ir import SpecError


def list_specs() -> list[str]:
    """Names of the built-in specs."""
    from . import specs

    return sorted(m.name for m in pkgutil.iter_modules(specs.__path__) if not m.name.startswith("_"))


def _specs_in(module) -> list[Spec]:
    return [v for v in vars(module).values() if isinstance(v, Spec)]


def load_spec(name_or_path: str | os.PathLike | types.ModuleType, name: str | None = None) -> Spec:
    """A built-in spec by name (``"mamba2"``), the spec defined in a ``.py`` file, or the one an imported
    module defines (``from mixerc.specs import mamba2``). If the file or module defines several, pass
    ``name`` (or write ``path.py:name``)."""
    if isinstance(name_or_path, Spec):
        return name_or_path
    if isinstance(name_or_path, types.ModuleType):
        where = name_or_path.__name__
        return _one_of(_specs_in(name_or_path), where, name, f"{where}.<spec> or load_spec({where}, name=...)")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise SpecError(f"expected a spec: an @mx.spec function, a module that defines one, a built-in name "
                        f"({', '.join(list_specs())}) or a path to a .py file, "
                        f"got {type(name_or_path).__name__} {name_or_path!r:.60}")
    text = os.fspath(name_or_path)
    if name is None and ":" in text and text.rsplit(":", 1)[0].endswith(".py"):
        text, name = text.rsplit(":", 1)
    if text.endswith(".py") or os.sep in text:
        if not os.path.isfile(text):
            raise SpecError(f"spec file {text!r} does not exist; pass a path to a .py file that "
                            f"defines an @mx.spec function, or a built-in name ({', '.join(list_specs())})")
        mod_name = "mixerc_user_spec_" + os.path.splitext(os.path.basename(text))[0]
        spec_obj = importlib.util.spec_from_file_location(mod_name, os.path.abspath(text))
        module = importlib.util.module_from_spec(spec_obj)
        try:
            spec_obj.loader.exec_module(module)
        except SyntaxError as e:  # in the file itself or in a module it imports
            own = e.filename and os.path.abspath(e.filename) == os.path.abspath(text)
            where = f"{text if own or not e.filename else e.filename}:{e.lineno}"
            what = "spec file" if own or not e.filename else f"a module the spec file imports ({text})"
            raise SpecError(f"{what} has a syntax error: {e.msg}", where) from e
        except Exception as e:  # NameError, ImportError, ... at the file's top level
            err = user_code_error(e, text, f"importing spec file {text!r}", shown=text)
            if err is None:  # mixerc's typed errors, and mixerc's own bugs, as they are
                raise
            raise err from e
        found, where = _specs_in(module), text
    else:
        if text not in list_specs():
            raise SpecError(f"no built-in spec named {text!r}; built-ins: {', '.join(list_specs())} "
                            "(or pass a path to a .py file)")
        module = importlib.import_module(f"mixerc.specs.{text}")
        found, where = _specs_in(module), f"mixerc.specs.{text}"
    return _one_of(found, where, name, "load_spec(path, name=...) or 'path.py:name'")


def _one_of(found: list[Spec], where: str, name: str | None, how: str) -> Spec:
    """The one spec of ``found`` (those that ``where`` defines), or the one named ``name``; ``how``: how
    to name one."""
    if name is not None:
        found = [s for s in found if s.name == name]
    if not found:
        raise SpecError(f"{where} defines no @mx.spec function" + (f" named {name!r}" if name else ""))
    if len(found) > 1:
        raise SpecError(f"{where} defines several specs ({', '.join(s.name for s in found)}); "
                        f"pick one with {how}")
    return found[0]
