"""Lazy post-import hook that registers ``efficientad_plugin`` with anomalib.

anomalib has no plugin registry: ``anomalib train --model EfficientAdPlugin``
(the short class name) only resolves when the plugin class has been imported
before jsonargparse parses the command line.  This module makes that happen
without slowing down every Python start-up:

* ``efficientad_plugin_hook.pth`` (installed at the site-packages root) calls
  :func:`install` at interpreter start-up.  :func:`install` only puts a tiny
  finder on :data:`sys.meta_path`; it imports neither torch nor anomalib.
* When, and only when, ``anomalib.models`` is imported, the finder asks the
  other finders for the real module spec and wraps its loader so that, right
  after the real ``exec_module`` has run ``anomalib/models/__init__.py``,
  ``import efficientad_plugin`` runs (the plugin's ``__init__`` registers its
  model class on ``anomalib.models``).  The finder then takes itself off
  :data:`sys.meta_path` and the module's ``__loader__`` / ``__spec__.loader``
  are set back to the real loader.

The hook never raises: a failing plugin import becomes a ``RuntimeWarning``
and anomalib keeps working; any error inside the hook itself is swallowed.

If ``anomalib.models`` is already imported when :func:`install` is called, the
plugin is imported right away (same warning-on-failure rules) and no finder
is added.

Set ``EFFICIENTAD_PLUGIN_NO_HOOK=1`` in the environment to turn the hook off.

Only ``sys`` and ``os`` (both already loaded when ``.pth`` files run) are used,
on purpose: importing ``importlib.abc`` alone costs tens of milliseconds at
start-up, so the finder implements the ``MetaPathFinder`` protocol
(``find_spec``) without inheriting from the ABC.
"""

import os
import sys

__all__ = ["DISABLE_ENV_VAR", "PLUGIN", "TARGET", "install", "uninstall"]

TARGET = "anomalib.models"
PLUGIN = "efficientad_plugin"
DISABLE_ENV_VAR = "EFFICIENTAD_PLUGIN_NO_HOOK"

# Attribute that marks our finders.  A marker attribute, not isinstance(), so
# that two copies of this module (say, one in site-packages and one in src/)
# still recognise each other's finders.
_MARKER = "_efficientad_plugin_hook_finder"


def _warn(message):
    """Emit a RuntimeWarning; never raise (not even under ``-W error``)."""
    try:
        import warnings  # already imported at start-up by the interpreter

        warnings.warn(message, RuntimeWarning, stacklevel=3)
    except Exception:
        try:
            sys.stderr.write(f"RuntimeWarning: {message}\n")
        except Exception:
            pass


def _import_plugin(plugin, target):
    """Import the plugin package; turn any failure into a warning."""
    try:
        __import__(plugin)
    except Exception as exc:
        _warn(
            f"{plugin} could not be imported after {target} was, so its models "
            f"are not registered with {target} (short names such as "
            f"'--model EfficientAdPlugin' will not resolve): "
            f"{type(exc).__name__}: {exc}. "
            f"Set {DISABLE_ENV_VAR}=1 to silence this hook."
        )


def _unwrap(loader):
    """The loader under any number of nested hook wrappers."""
    for _ in range(100):  # bounded, in case of a (never expected) cycle
        inner = getattr(loader, "__dict__", {}).get("_efficientad_real_loader")
        if inner is None:
            break
        loader = inner
    return loader


class _HookedLoader:
    """Delegates everything to the real loader; adds a step after exec_module.

    Only ``create_module`` and ``exec_module`` are defined here; every other
    attribute (``get_resource_reader``, ``get_source``, ``is_package``,
    ``name``, ``path``...) is forwarded to the real loader.  Once the module
    has been executed, ``module.__loader__`` and ``module.__spec__.loader`` are
    set back to the real loader, so nothing keeps seeing this wrapper.
    """

    def __init__(self, loader, finder):
        self._efficientad_real_loader = loader
        self._efficientad_finder = finder

    def __getattr__(self, name):
        # Only called for attributes not found on the wrapper itself.
        if name.startswith("_efficientad_"):
            raise AttributeError(name)
        return getattr(self._efficientad_real_loader, name)

    def __repr__(self):
        return f"<efficientad_plugin hook around {self._efficientad_real_loader!r}>"

    def create_module(self, spec):
        real = self._efficientad_real_loader
        create = getattr(real, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module):
        try:
            self._efficientad_real_loader.exec_module(module)
        finally:
            # Put the real loader back whatever happened.  If another copy of
            # this hook wrapped the spec too, the outermost wrapper does it.
            try:
                real = _unwrap(self)
                if getattr(module, "__loader__", None) is self:
                    module.__loader__ = real
                spec = getattr(module, "__spec__", None)
                if spec is not None and spec.loader is self:
                    spec.loader = real
            except Exception:
                pass
        # Only reached when the real exec_module succeeded.
        finder = self._efficientad_finder
        try:
            finder._done = True
            finder._remove()
            # importlib binds the submodule on its parent package (so that
            # ``anomalib.models`` works as an attribute) only after this method
            # returns; do it now, so the plugin can use that attribute.
            name = module.__spec__.name
            parent, _, child = name.rpartition(".")
            if parent and parent in sys.modules:
                setattr(sys.modules[parent], child, sys.modules.get(name, module))
        except Exception:
            pass
        _import_plugin(finder._plugin, finder._target)


class _Finder:
    """``sys.meta_path`` finder that only ever answers for one module name."""

    def __init__(self, target=TARGET, plugin=PLUGIN):
        setattr(self, _MARKER, (target, plugin))
        self._target = target
        self._plugin = plugin
        self._done = False
        self._busy = False

    def __repr__(self):
        return f"<efficientad_plugin hook finder {self._target} -> {self._plugin}>"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self._target or self._done or self._busy:
            return None
        try:
            self._busy = True  # guard against re-entry from other finders
            try:
                spec = self._real_spec(fullname, path, target)
            finally:
                self._busy = False
            if spec is None:
                return None
            loader = spec.loader
            if loader is None or not hasattr(loader, "exec_module"):
                return None
            spec.loader = _HookedLoader(loader, self)
            # Not removed from sys.meta_path here: importlib.util.find_spec()
            # probes (without importing) must not use the hook up; removal
            # happens once the module has really been executed.
            return spec
        except Exception:
            return None

    def _real_spec(self, fullname, path, target):
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def _remove(self):
        # Rebind rather than mutate in place: an import running in another
        # thread may be iterating over the current list right now, and
        # removing an item from under it would make it skip a finder.
        if any(f is self for f in sys.meta_path):
            sys.meta_path = [f for f in sys.meta_path if f is not self]


def _find_installed(target, plugin):
    for finder in sys.meta_path:
        if getattr(finder, _MARKER, None) == (target, plugin):
            return finder
    return None


def install(target=TARGET, plugin=PLUGIN):
    """Arrange for ``import <plugin>`` to run right after ``import <target>``.

    Idempotent (a second call adds no second finder) and never raises.
    Returns True when a finder is (already) in place, False otherwise: when the
    hook is disabled through ``EFFICIENTAD_PLUGIN_NO_HOOK``, or when ``target``
    was already imported (then the plugin is imported immediately instead).
    """
    try:
        if os.environ.get(DISABLE_ENV_VAR, "").strip() not in ("", "0"):
            return False
        if target in sys.modules:
            _import_plugin(plugin, target)
            return False
        if _find_installed(target, plugin) is not None:
            return True
        sys.meta_path.insert(0, _Finder(target, plugin))
        return True
    except Exception:
        return False


def uninstall(target=TARGET, plugin=PLUGIN):
    """Remove the finder(s) installed for ``target``/``plugin``; never raises."""
    try:
        mine = [f for f in sys.meta_path if getattr(f, _MARKER, None) == (target, plugin)]
        for finder in mine:
            finder._done = True
        if mine:
            sys.meta_path = [f for f in sys.meta_path if not any(f is m for m in mine)]
        return bool(mine)
    except Exception:
        return False
