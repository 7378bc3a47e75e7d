"""The shape of the code: who may import what, every command documented, light commands stay light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "restream"
README = SRC.parent.parent / "README.md"
MODULES = sorted(SRC.rglob("*.py"))
CLI = SRC / "cli"  # the cli package: every module in it counts as "cli" below


def role(path: Path) -> str:
    """The name a module goes by in these rules: "cli" for every module of the cli package, else its stem."""
    return "cli" if path.parent == CLI else path.stem


def package_of(path: Path) -> str:
    """The package a module's relative imports start from (restream, or restream.cli)."""
    return ".".join(("restream", *path.parent.relative_to(SRC).parts))

# top-level package -> the only modules (roles: stems, "cli" for the cli package) allowed to import it
ALLOWED = {
    "rich": {"view", "tables", "cli"},
    "subprocess": {"discover", "run", "check", "doctor", "schedule", "demo", "keysource"},
    "ffmpeg": {"plan"},
}


def imported_names(path: Path) -> set[str]:
    """Every module name imported anywhere in the file (top level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            parts = package_of(path).split(".")
            base = ".".join(parts[:len(parts) - node.level + 1])
            names.add(f"{base}.{node.module}" if node.module else base)
            names.update(f"{base}.{alias.name}" for alias in node.names if not node.module)
    return names


def test_modules_are_found():
    assert {"cli", "profile", "errors"} <= {role(m) for m in MODULES}
    assert {"__init__", "destinations", "broadcast", "ops"} <= {m.stem for m in MODULES if role(m) == "cli"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_only_allowed_modules_import(package):
    offenders = sorted(str(m.relative_to(SRC)) for m in MODULES
                       if role(m) not in ALLOWED[package]
                       and any(n == package or n.startswith(package + ".") for n in imported_names(m)))
    assert offenders == [], f"{package} may only be imported by {sorted(ALLOWED[package])}"


def test_nothing_imports_cli():
    offenders = sorted(str(m.relative_to(SRC)) for m in MODULES if role(m) not in ("cli", "__main__")
                       and any(n == "restream.cli" or n.startswith("restream.cli.") for n in imported_names(m)))
    assert offenders == []


def _commands():
    import typer

    from restream.cli import app

    return typer.main.get_command(app).commands


def test_every_command_has_help_text():
    missing = sorted(name for name, cmd in _commands().items() if not (cmd.help or "").strip())
    assert missing == []


def test_every_command_is_in_the_readme():
    text = README.read_text(encoding="utf-8")
    if "(placeholder)" in text:
        pytest.skip("README.md is still a placeholder")
    missing = sorted(name for name in _commands() if f"restream {name}" not in text)
    assert missing == [], "commands not mentioned in README.md"


def test_light_commands_do_not_import_heavy_modules(tmp_path):
    """`restream list` must not pull in ffmpeg-python or rich.live (start-up time)."""
    script = textwrap.dedent("""
        import json, sys
        sys.argv = ["restream", "list"]
        from restream.cli import main
        try:
            main()
        except SystemExit:
            pass
        heavy = [m for m in ("ffmpeg", "rich.live", "restream.plan", "restream.run", "restream.view")
                 if m in sys.modules]
        print(json.dumps(heavy), file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
