"""`pip install .` (no extras) leaves out OpenVINO and NNCF: the package and every tool's --help must still work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted(path.name for path in (ROOT / "tools").glob("*.py"))
# Makes `import openvino` / `import nncf` fail exactly as when the packages are not installed.
WITHOUT_EXTRAS = "import sys; sys.modules['openvino'] = None; sys.modules['nncf'] = None; "


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS + code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)


def test_the_blocker_really_blocks_openvino() -> None:
    result = _python("import openvino")
    assert result.returncode != 0 and "openvino" in result.stderr


def test_package_and_every_tools_help_work_without_openvino_or_nncf() -> None:
    # one interpreter for all: each would otherwise pay seconds of torch/anomalib imports
    code = ("import efficientad_plugin, efficientad_plugin.diagnosis, efficientad_plugin.distillation, "
            "efficientad_plugin.evaluation, efficientad_plugin.quantization, efficientad_plugin.benchmarking.child\n"
            "print('loaded', sorted(name for name in sys.modules if name.split('.')[0] in ('openvino', 'nncf') "
            "and sys.modules[name] is not None))\n"
            "import runpy, io, contextlib\n"
            "for tool in {!r}:\n"
            "    out = io.StringIO()\n"
            "    try:\n"
            "        with contextlib.redirect_stdout(out):\n"
            "            sys.argv = [tool, '--help']\n"
            "            runpy.run_path({!r} + '/' + tool, run_name='__main__')\n"
            "    except SystemExit as stop:\n"
            "        assert stop.code in (0, None), (tool, stop.code)\n"
            "    assert 'usage:' in out.getvalue(), tool\n"
            "    print('ok', tool)\n").format(TOOLS, str(ROOT / "tools"))
    result = _python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "loaded []" in lines  # the package imported neither OpenVINO nor NNCF
    assert [line.split()[1] for line in lines if line.startswith("ok ")] == TOOLS


def test_every_installed_command_points_at_a_console_entry() -> None:
    import importlib

    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(name.removeprefix("efficientad-").replace("-", "_") + ".py" for name in scripts) == sorted(
        tool for tool in TOOLS if tool != "build_bundled_penalty_set.py")  # a maintainer's tool, not a command
    for target in scripts.values():
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert callable(command) and command.__doc__, target
