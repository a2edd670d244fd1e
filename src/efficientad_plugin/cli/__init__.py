"""The package's commands (``[project.scripts]`` in pyproject.toml), thin jsonargparse front ends.

Each module's ``main(argv)`` returns its result for callers and tests; ``command`` is the console entry, which turns
that result into an exit status. ``tools/<name>.py`` are kept as aliases of the same commands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def console_command(main: Callable[[], Any]) -> Callable[[], int]:
    """A console entry for ``main``: an ``int`` result is the exit status, any other result means success (0)."""

    def command() -> int:
        result = main()
        return result if isinstance(result, int) and not isinstance(result, bool) else 0

    command.__doc__ = main.__doc__
    return command
