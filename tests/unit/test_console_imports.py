"""The console, loaded whole, brings in no router module but the control client and schema
(tests/unit/test_control_imports.py checks the import statements; this checks what loads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def loaded_router_modules(statement: str) -> set[str]:
    code = (
        f"import sys; {statement}; "
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('router'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_the_console_app_loads_only_the_client_and_schema() -> None:
    for module in ("tui.app", "tui.main"):
        assert loaded_router_modules(f"import {module}") == {
            "router",
            "router.control",
            "router.control.client",
            "router.control.schema",
        }, module


def test_the_check_sees_an_internal_module_when_one_loads() -> None:
    # The same probe, made to load an internal module, must report it (else it proves nothing).
    assert "router.spool.spool" in loaded_router_modules("import tui.app, router.spool.spool")


def test_the_router_does_not_load_textual_for_its_cli() -> None:
    code = "import sys, router.cli; print('textual' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
