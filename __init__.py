"""InvokeAI node pack entry point of this repository (InvokeAI 6.14: Nodes tab ▸ Install from a git URL).

InvokeAI clones the repository into its nodes folder as `nodes/<repository name>/` and imports this file
as the top-level module `<repository name>`; it installs no dependencies. This file loads the `dype`
package from the clone's `src/dype` (torch and diffusers are already in InvokeAI's environment) and
registers its nodes under the clone's folder name, so the Nodes tab counts them and its Uninstall puts
InvokeAI's own FLUX nodes back.

* A clone named `dype` is imported under the package's own name: this module then hands `sys.modules`
  over to the real package from `src/dype` (InvokeAI keeps nothing else under that name).
* If a `dype` package from elsewhere is already loaded (a pip install behind `dype invokeai install`),
  this clone refuses with an ImportError naming both, and the first copy keeps the nodes.
* Outside InvokeAI (pytest collecting a checkout, a build tool) this module does nothing, except in a
  checkout named `dype`, where whoever imports it wants the package and gets it.
"""

import sys
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

PACKAGE = "dype"
CLONE = Path(__file__).resolve().parent
SOURCE = CLONE / "src" / PACKAGE


def _run_by_invokeai() -> bool:
    """Whether InvokeAI's node-pack loader (startup, reload or install) is executing this file."""
    frame = sys._getframe(1)
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("invokeai."):
            return True
        frame = frame.f_back
    return False


def _loaded_location(skip: ModuleType | None) -> Path | None:
    """The folder of a `dype` package already imported in this process (a reload, or another copy)."""
    for name, module in list(sys.modules.items()):
        if module is None or module is skip or not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        depth = name.count(".") if path.name == "__init__.py" else name.count(".") - 1
        folder = path.parent
        for _ in range(depth):
            folder = folder.parent
        return folder
    return None


def _install_package(location: Path, extra_path: list[Path]) -> ModuleType:
    """Import the package in `location` as `dype` (without touching sys.path) and return it."""
    spec = spec_from_file_location(
        PACKAGE, location / "__init__.py", submodule_search_locations=[str(p) for p in (location, *extra_path)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the dype package from {location}")
    module = module_from_spec(spec)
    previous = sys.modules.get(PACKAGE)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if previous is not None:
            sys.modules[PACKAGE] = previous
        else:
            sys.modules.pop(PACKAGE, None)
        raise
    # Submodules imported before (a reload re-runs this file) stay in sys.modules: attach them again.
    for name, submodule in list(sys.modules.items()):
        if name.startswith(PACKAGE + ".") and name.count(".") == 1 and submodule is not None:
            setattr(module, name.split(".", 1)[1], submodule)
    return module


def _load() -> None:
    this = sys.modules.get(__name__)
    by_invokeai = _run_by_invokeai()
    if __name__ != PACKAGE and not by_invokeai:
        return
    loaded = _loaded_location(skip=this)
    current = sys.modules.get(PACKAGE)
    if current is None or current is this:
        _install_package(loaded or SOURCE, extra_path=[] if by_invokeai else [CLONE])
    if not by_invokeai:
        return
    if loaded is not None and loaded != SOURCE.resolve():
        raise ImportError(
            f"the dype package is already loaded from {loaded}, so this clone ({CLONE}) was not loaded: InvokeAI "
            "can run one copy. Keep one: uninstall this pack in the Nodes tab, or remove the other copy "
            "(`dype invokeai uninstall --root <root>`, then `pip uninstall dype`) and restart InvokeAI"
        )
    import dype.invokeai

    dype.invokeai.register(pack=CLONE.name, folder=CLONE)


_load()
