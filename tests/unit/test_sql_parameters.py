"""SQL is only ever built with parameters ($1, $2, ...), never by pasting values into text.

Every .py file under server/, matcher/ and bench/ is parsed (the AST sees strings
split over lines and f-strings inside calls alike) and every piece of SQL text
built with a value that is not a constant fails the test: an f-string, `%`
formatting, `.format()` or `+` concatenation. Interpolating a module-level string
constant of the same file (db.USER_COLUMNS) is still constant SQL and passes.

Identifiers cannot be bound as parameters, so a few statements must splice one in.
Each such place is listed in ALLOWED with why its value cannot come from input; a
new one fails with its file:line until it is reviewed and listed, and an entry
whose code has gone fails too, so the list stays exact.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.astparse import parse

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("server", "matcher", "bench")

# SQL keywords in upper case (the house style) anywhere, or in any case where the
# text starts (an error message saying "could not create database x" is not SQL).
SQL_TEXT = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|TRUNCATE|GRANT|REVOKE)\b"
    r"|\b(CREATE|DROP|ALTER)\s+(TABLE|SCHEMA|DATABASE|INDEX|ROLE|USER|VIEW|EXTENSION)\b"
    r"|(?i:^\s*(select|insert|update|delete|create|drop|alter|truncate|grant|with)\s)",
)


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the repository, with forward slashes
    line: int
    function: str  # qualified name of the enclosing def ("" at module level)
    values: tuple[str, ...]  # the non-constant expressions spliced into the SQL
    how: str  # "f-string", "%", ".format()" or "+"

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.path, self.function, self.values)

    def __str__(self) -> str:
        where = f" in {self.function}" if self.function else ""
        return f"{self.path}:{self.line}{where}: SQL built by {self.how} with {', '.join(self.values)}"


# (file, enclosing function, spliced expressions) → why it is safe.
ALLOWED: dict[tuple[str, str, tuple[str, ...]], str] = {
    ("server/api.py", "Api.patch_astrologer", ("_COLUMNS[column]",)): (
        "a column name looked up in the fixed _COLUMNS map; `column` is a key that "
        "_astrologer_fields accepted, never text from the request"
    ),
    ("server/db.py", "migrate", ("schema",)): (
        "CREATE SCHEMA needs an identifier; the name is checked against the "
        "_SCHEMA_NAME regex ([a-z_][a-z0-9_]*) just before"
    ),
    ("bench/stores.py", "_create_database", ("name",)): (
        "CREATE DATABASE needs an identifier; the name is 'bench_' plus uuid4().hex, "
        "made two lines above"
    ),
    ("bench/stores.py", "Stores._drop", ("self._database",)): (
        "DROP DATABASE of the name _create_database made ('bench_' plus uuid4().hex)"
    ),
}


# ---- the scanner -----------------------------------------------------------------


def _module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level names bound once, to text known when the file is read."""
    constants: dict[str, str] = {}
    bound: dict[str, int] = {}
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                bound[target.id] = bound.get(target.id, 0) + 1
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and bound.get(target.id) == 1:
            text = _constant_text(value, constants)
            if text is not None:
                constants[target.id] = text
    return constants


def _constant_text(node: ast.expr, constants: dict[str, str]) -> str | None:
    """The text of an expression made only of literals and known constants, else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    if isinstance(node, ast.JoinedStr):
        parts = []
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                if part.format_spec is not None or part.conversion not in (-1, ord("s")):
                    return None
                text = _constant_text(part.value, constants)
            else:
                text = _constant_text(part, constants)
            if text is None:
                return None
            parts.append(text)
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _constant_text(node.left, constants), _constant_text(node.right, constants)
        return None if left is None or right is None else left + right
    return None


def _added(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _added(node.left) + _added(node.right)
    return [node]


def _sketch(node: ast.expr, constants: dict[str, str]) -> str:
    """The literal text of a string expression with every non-constant part as {}."""
    text = _constant_text(node, constants)
    if text is not None:
        return text
    if isinstance(node, ast.JoinedStr):
        parts = (p.value if isinstance(p, ast.FormattedValue) else p for p in node.values)
        return "".join(_constant_text(part, constants) or "{}" for part in parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return "".join(_sketch(part, constants) for part in _added(node))
    return "{}"


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, constants: dict[str, str]) -> None:
        self.path = path
        self.constants = constants
        self.scope: list[str] = []
        self.findings: list[Finding] = []
        self._inside: set[int] = set()  # nodes already reported as part of a larger one

    def _visit_scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _visit_scope

    def _report(self, node: ast.expr, sql: str, values: list[ast.expr], how: str) -> None:
        for inner in ast.walk(node):
            self._inside.add(id(inner))
        if not SQL_TEXT.search(sql):
            return
        spliced = tuple(
            ast.unparse(v) for v in values if _constant_text(v, self.constants) is None
        )
        if spliced:
            self.findings.append(
                Finding(self.path, node.lineno, ".".join(self.scope), spliced, how)
            )

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        if id(node) not in self._inside:
            values = [p.value for p in node.values if isinstance(p, ast.FormattedValue)]
            self._report(node, _sketch(node, self.constants), values, "f-string")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if id(node) not in self._inside:
            if isinstance(node.op, ast.Mod) and _is_text(node.left):
                values = list(node.right.elts) if isinstance(node.right, ast.Tuple) else [node.right]
                values += _formatted(node.left)
                self._report(node, _sketch(node.left, self.constants), values, "%")
            elif isinstance(node.op, ast.Add) and any(_is_text(p) for p in _added(node)):
                parts = _added(node)
                values = [p for p in parts if not isinstance(p, ast.JoinedStr)]
                values += [v for p in parts for v in _formatted(p)]
                self._report(node, _sketch(node, self.constants), values, "+")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (
            id(node) not in self._inside
            and isinstance(func, ast.Attribute)
            and func.attr == "format"
            and _is_text(func.value)
        ):
            values = [*node.args, *(k.value for k in node.keywords), *_formatted(func.value)]
            self._report(node, _sketch(func.value, self.constants), values, ".format()")
        self.generic_visit(node)


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _formatted(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.JoinedStr):
        return [p.value for p in node.values if isinstance(p, ast.FormattedValue)]
    return []


def scan_source(source: str, path: str) -> list[Finding]:
    tree = parse(source, path)
    scanner = _Scanner(path, _module_constants(tree))
    scanner.visit(tree)
    return scanner.findings


def scan_tree() -> list[Finding]:
    findings = []
    for top in SCANNED:
        for file in sorted((ROOT / top).rglob("*.py")):
            relative = file.relative_to(ROOT).as_posix()
            findings += scan_source(file.read_text(encoding="utf-8"), relative)
    return findings


# ---- the repository ---------------------------------------------------------------


def test_sql_is_built_with_parameters_only() -> None:
    unreviewed = [str(f) for f in scan_tree() if f.key not in ALLOWED]
    assert not unreviewed, (
        "SQL built from a value instead of $n parameters (bind the value, or, for an "
        "identifier from a fixed list, add it to ALLOWED with the reason):\n  "
        + "\n  ".join(unreviewed)
    )


def test_every_allowed_exception_still_exists() -> None:
    present = {f.key for f in scan_tree()}
    stale = [f"{path} {function} {values}" for path, function, values in ALLOWED.keys() - present]
    assert not stale, "ALLOWED lists code that is gone; remove the entries:\n  " + "\n  ".join(stale)


def test_the_scanned_trees_exist() -> None:
    for top in SCANNED:
        assert list((ROOT / top).rglob("*.py")), top


# ---- the scanner on small inputs --------------------------------------------------------


def _found(source: str) -> list[tuple[int, str, tuple[str, ...], str]]:
    return [
        (f.line, f.function, f.values, f.how)
        for f in scan_source(textwrap.dedent(source), "x.py")
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            'async def f(conn, uid):\n    await conn.execute(f"DELETE FROM users WHERE id = \'{uid}\'")\n',
            [(2, "f", ("uid",), "f-string")],
            id="f-string",
        ),
        pytest.param(
            'def f(c, name):\n    c.fetch("SELECT * FROM users WHERE name = \'%s\'" % name)\n',
            [(2, "f", ("name",), "%")],
            id="percent",
        ),
        pytest.param(
            'def f(c, a, b):\n    c.fetch("SELECT * FROM t WHERE a = %s AND b = %s" % (a, b))\n',
            [(2, "f", ("a", "b"), "%")],
            id="percent-tuple",
        ),
        pytest.param(
            'def f(c, name):\n    c.fetch("SELECT * FROM users WHERE name = \'{}\'".format(name))\n',
            [(2, "f", ("name",), ".format()")],
            id="format",
        ),
        pytest.param(
            'def f(c, table):\n    c.execute("TRUNCATE " + table)\n',
            [(2, "f", ("table",), "+")],
            id="concatenation",
        ),
        pytest.param(
            'def f(c, col, uid):\n    sql = ("UPDATE astrologers SET "\n'
            '           + col + " = $1 WHERE id = " + uid)\n    c.execute(sql)\n',
            [(2, "f", ("col", "uid"), "+")],
            id="concatenation-over-lines",
        ),
        pytest.param(
            'class A:\n    async def g(self, c, v):\n        await c.execute(\n'
            '            "UPDATE astrologers"\n            f" SET weight = {v}"\n        )\n',
            [(4, "A.g", ("v",), "f-string")],
            id="implicit-concatenation-in-a-method",
        ),
        pytest.param(
            'def f(c, schema):\n    c.execute(f\'create schema "{schema}"\')\n',
            [(2, "f", ("schema",), "f-string")],
            id="lowercase-ddl",
        ),
        pytest.param(
            'COLS = "id, name"\nALL = COLS + ", email"\n'
            'def f(c, uid):\n    c.fetch(f"SELECT {ALL} FROM users WHERE id = $1", uid)\n',
            [],
            id="module-constants-are-constant-sql",
        ),
        pytest.param(
            'COLS = "id"\ndef f(c, uid):\n    global COLS\n    COLS = uid\n'
            '    c.fetch(f"SELECT {COLS} FROM users")\n',
            [(5, "f", ("COLS",), "f-string")],
            id="a-rebound-name-is-not-constant",
        ),
        pytest.param(
            'def f(c, uid):\n    c.fetch("SELECT * FROM users WHERE id = $1", uid)\n',
            [],
            id="parameters",
        ),
        pytest.param(
            'def f(name, n, e):\n    raise ValueError(f"{name} must be one of {n}")\n'
            '    log.info("selected %s of %d" % (name, n))\n'
            '    raise OSError(f"could not create database {name}: {e}")\n',
            [],
            id="not-sql",
        ),
    ],
)
def test_scanner(source: str, expected: list[tuple[int, str, tuple[str, ...], str]]) -> None:
    assert _found(source) == expected
