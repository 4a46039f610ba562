"""The rooms of the package import one way only, as docs/architecture.md draws them: a module may import from its own
room, from the rooms its room's arrows point to, and from the shared base; an import the drawing does not have fails
here, named."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_meta"

ROOMS = ("engine", "data", "families", "trainer", "callbacks", "mixins", "optim", "models", "tooling")
DOORS = ("fabric", "cli", "cli_errors", "cli_parse_errors")  # front doors at the package root
ARROWS = {
    "engine": set(),
    "data": set(),
    "families": {"data"},
    "trainer": {"engine", "data"},
    "callbacks": {"trainer", "engine", "data", "families"},
    "mixins": {"data"},
    "optim": {"data", "families"},
    "models": {"callbacks", "mixins", "optim", "data", "families"},
    "tooling": {"callbacks", "trainer", "engine"},
    "fabric": {"engine"},
    "cli_errors": {"engine"},
    "cli_parse_errors": set(),
    "cli": {"callbacks", "trainer", "data", "cli_errors", "cli_parse_errors"},
    "base": set(),
}
"""Room -> the rooms it imports from (besides itself and the base: utils, validation, protocols, metrics, ...)."""

LAZY = {
    ("data", "families"),  # TaskDataModule("glyphs"): the built-in families by name, imported when named
    ("base", "callbacks"),  # the package root's names (lightning_meta.Leap), imported on first use
    ("base", "engine"),
    ("base", "mixins"),
    ("base", "data"),  # protocols.py: a type that is only checked, imported where it is used
}
"""Imports inside a function, against the arrows: each one named with its reason."""


def room_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ROOMS + DOORS:
        return parts[1]
    return "base"


def imports() -> list[tuple[str, str, str, bool]]:
    """(file, its room, the imported module's room, at module level)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_meta"):
                top_names = [f"lightning_meta.{alias.name}" for alias in node.names]
                names = [node.module] if node.module != "lightning_meta" else top_names
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("lightning_meta")]
            else:
                continue
            for name in names:
                file = str(path.relative_to(PACKAGE.parent))
                found.append((file, room_of(module), room_of(name), node.col_offset == 0))
    return found


def test_every_import_follows_an_arrow_of_the_drawing():
    wrong = [
        f"{file}: {source} -> {target}{'' if top else ' (inside a function)'}"
        for file, source, target, top in imports()
        if source != target
        and target != "base"
        and target not in ARROWS[source]
        and (top or (source, target) not in LAZY)
    ]
    assert not wrong, "imports against the arrows of docs/architecture.md:\n" + "\n".join(wrong)


def test_the_drawing_has_no_cycle():
    def visit(room: str, path: list[str]) -> None:
        assert room not in path, "a cycle: " + " -> ".join([*path, room])
        for target in ARROWS[room]:
            visit(target, [*path, room])

    for room in ARROWS:
        visit(room, [])


def test_the_check_sees_an_import_against_the_arrows(tmp_path):
    assert room_of("lightning_meta.families.glyphs") == "families" and room_of("lightning_meta.utils") == "base"
    assert ("lightning_meta/engine/learner.py", "engine", "base", True) in imports()  # the engine's own imports
    assert "callbacks" not in ARROWS["engine"]  # so an engine module importing a callback would be listed
