"""`threatqa serve` on a busy server: the page's load reads the audit log, then answers SLOW_LOAD_S later.

Run by tests/test_browser_load.py as `python tests/slow_load_server.py serve ...` (the CLI's arguments).
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

from threatqa import ui
from threatqa.cli import main

SLOW_LOAD_S = 3.0
_history = ui._Handlers.history


@functools.wraps(_history)  # the same signature: Gradio passes the request by its annotation
def _slow_history(self: ui._Handlers, request: Any) -> tuple[Any, ...]:
    loaded = _history(self, request)  # read now: a question answered meanwhile is not in it
    time.sleep(SLOW_LOAD_S)
    return loaded


ui._Handlers.history = _slow_history  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
