"""Tests for the lazy post-import hook (src/_efficientad_plugin_hook.py).

The subprocess tests check the installed hook for real (the ``.pth`` file in
site-packages, what a fresh interpreter imports at start-up, what happens when
anomalib.models is imported).  The in-process tests drive the finder directly
on throw-away packages, so they are fast and do not touch anomalib.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.resources
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import uuid
import warnings
from pathlib import Path

import pytest

import _efficientad_plugin_hook as hook

REPO_ROOT = Path(__file__).resolve().parents[1]
PTH_NAME = "efficientad_plugin_hook.pth"
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
MARKER = "_efficientad_plugin_hook_finder"


# --------------------------------------------------------------------------
# helpers


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONWARNINGS", hook.DISABLE_ENV_VAR, "PYTHONSTARTUP"):
        env.pop(name, None)
    env.update(extra)
    return env


def _run(code: str, cwd: Path, *, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    # ``python -c`` puts the working directory first on sys.path: run from an
    # empty directory so neither the repo root nor site-packages shadows.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
        cwd=str(cwd),
        check=False,
    )


def _last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _our_finders(target: str = hook.TARGET, plugin: str = hook.PLUGIN) -> list:
    return [f for f in sys.meta_path if getattr(f, MARKER, None) == (target, plugin)]


# --------------------------------------------------------------------------
# the installed hook, in fresh interpreters


def test_pth_file_is_installed_at_site_packages_root() -> None:
    pth = SITE_PACKAGES / PTH_NAME
    assert pth.is_file(), f"{pth} missing: install the package (pip install -e .)"
    lines = [line for line in pth.read_text().splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("import ")  # site.py only executes such lines
    assert (SITE_PACKAGES / "_efficientad_plugin_hook.py").is_file()


def test_installed_hook_module_matches_source() -> None:
    """Editable installs copy the hook module: catch a stale copy."""
    source = REPO_ROOT / "src" / "_efficientad_plugin_hook.py"
    installed = SITE_PACKAGES / "_efficientad_plugin_hook.py"
    if not source.is_file() or not installed.is_file():
        pytest.skip("not running from a source checkout with an installed package")
    assert installed.read_bytes() == source.read_bytes(), "stale hook copy: re-run pip install -e ."
    pth_source = REPO_ROOT / "src" / PTH_NAME
    assert (SITE_PACKAGES / PTH_NAME).read_bytes() == pth_source.read_bytes()


def test_startup_installs_finder_without_importing_torch_or_anomalib(tmp_path: Path) -> None:
    assert (SITE_PACKAGES / PTH_NAME).is_file()  # so this cannot pass vacuously
    proc = _run(
        f"""
        import json, sys
        print(json.dumps({{
            "torch": "torch" in sys.modules,
            "anomalib": "anomalib" in sys.modules,
            "plugin": "efficientad_plugin" in sys.modules,
            "hook": "_efficientad_plugin_hook" in sys.modules,
            "finders": sum(getattr(f, {MARKER!r}, None) is not None for f in sys.meta_path),
        }}))
        """,
        tmp_path,
    )
    assert _last_json(proc) == {"torch": False, "anomalib": False, "plugin": False, "hook": True, "finders": 1}


def test_hook_can_be_disabled_by_environment(tmp_path: Path) -> None:
    proc = _run(
        f"""
        import json, sys
        print(json.dumps(sum(getattr(f, {MARKER!r}, None) is not None for f in sys.meta_path)))
        """,
        tmp_path,
        **{hook.DISABLE_ENV_VAR: "1"},
    )
    assert _last_json(proc) == 0


def test_install_twice_leaves_one_finder_in_fresh_interpreter(tmp_path: Path) -> None:
    proc = _run(
        f"""
        import json, sys
        import _efficientad_plugin_hook as h
        h.install(); h.install()
        print(json.dumps(sum(getattr(f, {MARKER!r}, None) is not None for f in sys.meta_path)))
        """,
        tmp_path,
    )
    assert _last_json(proc) == 1


def test_import_anomalib_models_registers_plugin(tmp_path: Path) -> None:
    proc = _run(
        f"""
        import json, sys
        import anomalib.models
        m = anomalib.models
        print(json.dumps({{
            "plugin_imported": "efficientad_plugin" in sys.modules,
            "finders_left": sum(getattr(f, {MARKER!r}, None) is not None for f in sys.meta_path),
            "loader": type(m.__loader__).__name__,
            "spec_loader_is_loader": m.__spec__.loader is m.__loader__,
            "registered": hasattr(m, "EfficientAdPlugin"),
        }}))
        """,
        tmp_path,
        HF_HUB_OFFLINE="1",
    )
    result = _last_json(proc)
    assert result["plugin_imported"], proc.stderr
    assert result["finders_left"] == 0
    assert result["loader"] == "SourceFileLoader"
    assert result["spec_loader_is_loader"]
    assert result["registered"], "efficientad_plugin/__init__.py must set anomalib.models.EfficientAdPlugin"


def test_broken_plugin_does_not_break_anomalib(tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "efficientad_plugin"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('boom: deliberately broken plugin')\n")
    proc = _run(
        """
        import sys
        import anomalib.models
        print("anomalib.models imported;", "efficientad_plugin" in sys.modules)
        """,
        tmp_path,
        PYTHONPATH=str(tmp_path / "broken"),
        HF_HUB_OFFLINE="1",
    )
    assert proc.returncode == 0, proc.stderr
    assert "anomalib.models imported; False" in proc.stdout
    assert "RuntimeWarning" in proc.stderr
    assert "efficientad_plugin could not be imported" in proc.stderr
    assert "boom: deliberately broken plugin" in proc.stderr


# --------------------------------------------------------------------------
# the finder itself, in this process, on throw-away packages


class FakeTree:
    """A throw-away ``<pkg>.models`` package plus a plugin package."""

    def __init__(self, root: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.root = root
        self.pkg = f"hooktest_pkg_{tag}"
        self.target = f"{self.pkg}.models"
        self.plugin = f"hooktest_plugin_{tag}"
        (root / self.pkg / "models").mkdir(parents=True)
        (root / self.pkg / "__init__.py").write_text("")
        self.write_target("EXECUTED = True\n")
        (root / self.pkg / "models" / "data.txt").write_text("resource ok")
        # Plain attribute access on the parent package, as a plugin would
        # write ``setattr(anomalib.models, ...)``.
        self.write_plugin(
            f"""
            import {self.target}
            {self.target}.REGISTERED = True
            """
        )

    def write_target(self, body: str) -> None:
        (self.root / self.pkg / "models" / "__init__.py").write_text(textwrap.dedent(body))

    def write_plugin(self, body: str, name: str | None = None) -> None:
        directory = self.root / (name or self.plugin)
        directory.mkdir(exist_ok=True)
        (directory / "__init__.py").write_text(textwrap.dedent(body))

    def names(self) -> list[str]:
        return [self.pkg, self.target, self.plugin]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delenv(hook.DISABLE_ENV_VAR, raising=False)
    fake = FakeTree(tmp_path)
    yield fake
    for name in list(sys.modules):
        if name.startswith(("hooktest_pkg_", "hooktest_plugin_")):
            del sys.modules[name]


def test_finder_imports_plugin_after_target_then_removes_itself(tree: FakeTree) -> None:
    assert hook.install(tree.target, tree.plugin) is True
    assert len(_our_finders(tree.target, tree.plugin)) == 1
    assert tree.plugin not in sys.modules

    module = importlib.import_module(tree.target)

    assert module.EXECUTED
    assert tree.plugin in sys.modules
    assert module.REGISTERED
    assert _our_finders(tree.target, tree.plugin) == []


def test_loader_is_restored_and_module_behaves_normally(tree: FakeTree) -> None:
    hook.install(tree.target, tree.plugin)
    module = importlib.import_module(tree.target)

    assert type(module.__loader__) is importlib.machinery.SourceFileLoader
    assert module.__spec__.loader is module.__loader__
    assert module.__file__.endswith("__init__.py")
    assert module.__path__ == [str(tree.root / tree.pkg / "models")]
    assert (importlib.resources.files(tree.target) / "data.txt").read_text() == "resource ok"
    assert "EXECUTED = True" in inspect.getsource(module)


def test_wrapped_loader_delegates_while_module_executes(tree: FakeTree) -> None:
    tree.write_target(
        """
        import importlib.resources
        IS_PACKAGE = __loader__.is_package(__name__)
        LOADER_NAME = __loader__.name
        READER = type(__loader__.get_resource_reader(__name__)).__name__
        DATA = (importlib.resources.files(__name__) / "data.txt").read_text()
        """
    )
    hook.install(tree.target, tree.plugin)
    module = importlib.import_module(tree.target)

    assert module.IS_PACKAGE is True
    assert module.LOADER_NAME == tree.target
    assert module.READER != "NoneType"
    assert module.DATA == "resource ok"
    assert module.REGISTERED


def test_find_spec_probe_does_not_use_up_the_hook(tree: FakeTree) -> None:
    hook.install(tree.target, tree.plugin)
    assert importlib.util.find_spec(tree.target) is not None  # a probe, no import
    assert tree.target not in sys.modules
    assert len(_our_finders(tree.target, tree.plugin)) == 1

    importlib.import_module(tree.target)
    assert tree.plugin in sys.modules


def test_failing_plugin_warns_and_target_still_imports(tree: FakeTree) -> None:
    tree.write_plugin("raise ImportError('plugin is broken on purpose')\n")
    hook.install(tree.target, tree.plugin)

    with pytest.warns(RuntimeWarning, match=f"{tree.plugin} could not be imported.*broken on purpose"):
        module = importlib.import_module(tree.target)

    assert module.EXECUTED
    assert tree.plugin not in sys.modules
    assert _our_finders(tree.target, tree.plugin) == []


def test_failing_plugin_never_raises_even_with_warnings_as_errors(
    tree: FakeTree, capsys: pytest.CaptureFixture[str]
) -> None:
    tree.write_plugin("raise ValueError('nope')\n")
    hook.install(tree.target, tree.plugin)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = importlib.import_module(tree.target)

    assert module.EXECUTED
    assert "ValueError: nope" in capsys.readouterr().err


def test_install_is_idempotent_and_uninstall_removes(tree: FakeTree) -> None:
    assert hook.install(tree.target, tree.plugin) is True
    assert hook.install(tree.target, tree.plugin) is True
    assert len(_our_finders(tree.target, tree.plugin)) == 1
    assert hook.uninstall(tree.target, tree.plugin) is True
    assert _our_finders(tree.target, tree.plugin) == []
    assert hook.uninstall(tree.target, tree.plugin) is False


def test_install_after_target_imported_imports_plugin_at_once(tree: FakeTree) -> None:
    importlib.import_module(tree.target)
    assert tree.plugin not in sys.modules

    assert hook.install(tree.target, tree.plugin) is False
    assert tree.plugin in sys.modules
    assert _our_finders(tree.target, tree.plugin) == []


def test_install_disabled_by_environment(tree: FakeTree, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hook.DISABLE_ENV_VAR, "1")
    assert hook.install(tree.target, tree.plugin) is False
    assert _our_finders(tree.target, tree.plugin) == []


def test_finder_ignores_other_names_and_missing_target(tree: FakeTree) -> None:
    finder = hook._Finder(f"{tree.pkg}.missing", tree.plugin)
    assert finder.find_spec("json") is None
    sys.meta_path.insert(0, finder)

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"{tree.pkg}.missing")

    assert finder in sys.meta_path  # still waiting for its module
    assert tree.plugin not in sys.modules


def test_target_failure_propagates_and_hook_stays_armed(tree: FakeTree) -> None:
    flag = tree.root / "fail_once"
    flag.write_text("")
    tree.write_target(
        f"""
        import os
        if os.path.exists({str(flag)!r}):
            os.remove({str(flag)!r})
            raise RuntimeError("target failed to import")
        EXECUTED = True
        """
    )
    hook.install(tree.target, tree.plugin)

    with pytest.raises(RuntimeError, match="target failed to import"):
        importlib.import_module(tree.target)
    assert tree.plugin not in sys.modules
    assert len(_our_finders(tree.target, tree.plugin)) == 1

    module = importlib.import_module(tree.target)
    assert module.EXECUTED and module.REGISTERED
    assert _our_finders(tree.target, tree.plugin) == []


def test_importing_plugin_first_is_fine(tree: FakeTree) -> None:
    """The plugin imports the target itself: the hook's import is a no-op."""
    hook.install(tree.target, tree.plugin)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugin = importlib.import_module(tree.plugin)
    assert sys.modules[tree.target].REGISTERED
    assert plugin is sys.modules[tree.plugin]
    assert _our_finders(tree.target, tree.plugin) == []


def test_two_hooks_for_the_same_target_both_run(tree: FakeTree) -> None:
    second = tree.plugin + "_second"
    tree.write_plugin(
        f"""
        import {tree.target} as _target
        _target.SECOND = True
        """,
        name=second,
    )
    hook.install(tree.target, tree.plugin)
    hook.install(tree.target, second)

    module = importlib.import_module(tree.target)

    assert module.REGISTERED and module.SECOND
    assert type(module.__loader__) is importlib.machinery.SourceFileLoader
    assert module.__spec__.loader is module.__loader__
    assert _our_finders(tree.target, tree.plugin) == _our_finders(tree.target, second) == []


def test_pth_line_installs_the_hook_and_never_raises_without_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    line = (REPO_ROOT / "src" / PTH_NAME).read_text().strip()
    calls = []
    stub = types.ModuleType("_efficientad_plugin_hook")
    stub.install = lambda: calls.append("install")
    monkeypatch.setitem(sys.modules, "_efficientad_plugin_hook", stub)
    exec(line, {})  # as site.py does
    assert calls == ["install"]
    monkeypatch.setitem(sys.modules, "_efficientad_plugin_hook", None)  # makes the import fail
    exec(line, {})  # must not raise
    broken = types.ModuleType("_efficientad_plugin_hook")
    broken.install = lambda: 1 / 0
    monkeypatch.setitem(sys.modules, "_efficientad_plugin_hook", broken)
    exec(line, {})  # an error inside the hook must not break interpreter start-up either
