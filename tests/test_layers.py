"""
The rooms of C{docs/architecture.rst} and what each may import, checked
against the imports of every module under C{cachetier/}.
"""

from __future__ import annotations

import ast
import os
import re

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "cachetier")
ARCHITECTURE = os.path.join(ROOT, "docs", "architecture.rst")
EVERYTHING = "(everything"


def rooms(text: str) -> dict[str, set[str] | None]:
    """
    The table after C{.. rooms-table} in C{text}: room -> the rooms it may
    import, or L{None} for a room that may import everything.
    """
    lines = text.split(".. rooms-table", 1)[1].splitlines()
    rules = [i for i, line in enumerate(lines) if re.fullmatch(r"=+\s+=+", line)]
    split = lines[rules[0]].index(" ") + 1
    table: dict[str, set[str] | None] = {}
    room = ""
    for line in lines[rules[1] + 1 : rules[2]]:
        left, right = line[:split].strip(), line[split:]
        if left:
            room = left.strip("`")
            table[room] = None if right.strip().startswith(EVERYTHING) else set()
        allowed = table[room]
        if allowed is not None:
            allowed.update(re.findall(r"``([\w.]+)``", right))
    return table


def module_name(path: str) -> str:
    relative = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    if relative[-1] == "__init__":
        relative.pop()
    return ".".join(relative)


def is_module(name: str) -> bool:
    path = os.path.join(ROOT, *name.split("."))
    return os.path.isdir(path) or os.path.exists(path + ".py")


def imports(path: str) -> list[tuple[int, str]]:
    """
    Every module of ours that C{path} imports, anywhere in it, absolute.
    """
    name = module_name(path)
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # "from . import x" may name a module: judge it by its full name.
            named = [f"{base}.{alias.name}" for alias in node.names if node.module is None]
            found += [(node.lineno, target) for target in named if is_module(target)]
            if len(named) < len(node.names) or not all(map(is_module, named)):
                found.append((node.lineno, base))
    return [(line, target) for line, target in found if target.split(".")[0] == "cachetier"]


def room_of(name: str, table: dict[str, set[str] | None]) -> str | None:
    matches = [room for room in table if name == room or name.startswith(room + ".")]
    return max(matches, key=len) if matches else None


def violations(table: dict[str, set[str] | None], paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        if module_name(path) == "cachetier":
            continue  # the package itself: __version__, nothing else
        source = room_of(module_name(path), table)
        if source is None:
            found.append(f"{module_name(path)}: in no room of the table")
            continue
        allowed = table[source]
        for line, target in imports(path):
            into = room_of(target, table)
            if allowed is None or target == "cachetier" or into == source:
                continue
            if into is None or into not in allowed:
                found.append(f"{os.path.relpath(path, ROOT)}:{line}: {source} imports {target}")
    return found


def modules() -> list[str]:
    return sorted(
        os.path.join(dirpath, f)
        for dirpath, _, files in os.walk(PACKAGE)
        for f in files
        if f.endswith(".py")
    )


class LayerTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(ARCHITECTURE, encoding="utf-8") as f:
            self.table = rooms(f.read())

    def test_every_import_follows_the_table(self) -> None:
        self.assertEqual(violations(self.table, modules()), [])

    def test_the_table_is_read(self) -> None:
        self.assertIsNone(self.table["cachetier.tap"])
        self.assertEqual(self.table["cachetier.objects"], set())
        self.assertIn("cachetier.metrics", self.table["cachetier.sync"] or ())

    def test_an_upward_import_is_found(self) -> None:
        bad = os.path.join(self.mktemp() + ".d", "cachetier", "store", "bad.py")
        os.makedirs(os.path.dirname(bad))
        with open(bad, "w") as f:
            f.write("def f():\n    from ..web import build_root\n")
        global ROOT
        saved, ROOT = ROOT, os.path.dirname(os.path.dirname(os.path.dirname(bad)))
        try:
            found = violations(self.table, [bad])
        finally:
            ROOT = saved
        self.assertEqual(found, ["cachetier/store/bad.py:2: cachetier.store imports cachetier.web"])
