"""ast.parse for tests that read the project's own source."""

from __future__ import annotations

import ast
import gc


def parse(source: str, path: str) -> ast.Module:
    """ast.parse with the collector off: CPython 3.11.7's AST constructor can report a
    spurious "recursion depth mismatch" when other code runs during the conversion,
    such as finalizers in a collection (gh-106905, fixed in 3.11.8)."""
    gc.disable()
    try:
        return ast.parse(source, filename=path)
    finally:
        gc.enable()
