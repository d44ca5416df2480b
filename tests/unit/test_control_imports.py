"""The console may use only the control API's client and schema, never router internals; the
client itself imports nothing from the router but the schema. Checked two ways: the import
statements in the source, and the modules really loaded in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "router" / "control" / "client.py"
ALLOWED_FOR_CONSOLE = {"router.control.client", "router.control.schema"}


def router_imports(path: Path) -> set[str]:
    """Every ``router...`` module a file imports (at any level, in any function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "router"}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "router"
        ):
            if node.module in ("router", "router.control"):
                found |= {f"{node.module}.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


def test_the_client_imports_only_the_schema() -> None:
    assert router_imports(CLIENT) == {"router.control.schema"}


def test_the_console_imports_only_the_client_and_the_schema() -> None:
    files = sorted((REPO / "tui").rglob("*.py"))
    assert files, "tui/ has no Python files: the check would prove nothing"
    for path in files:
        extra = router_imports(path) - ALLOWED_FOR_CONSOLE
        assert not extra, f"{path.relative_to(REPO)} imports router internals: {sorted(extra)}"


def test_loading_the_client_loads_no_other_router_module() -> None:
    code = (
        "import sys, router.control.client; "
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('router'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(loaded) == {
        "router",
        "router.control",
        "router.control.client",
        "router.control.schema",
    }


def test_the_check_catches_an_internal_import(tmp_path: Path) -> None:
    sneaky = tmp_path / "screen.py"
    sneaky.write_text(
        "from router.control.client import ControlClient\n"
        "def f():\n    from router.spool.spool import Spool\n"
        "import router.delivery.queue\nfrom router.control import views\n"
    )
    assert router_imports(sneaky) - ALLOWED_FOR_CONSOLE == {
        "router.spool.spool",
        "router.delivery.queue",
        "router.control.views",
    }
