"""The package's architecture and types hold: import-linter's layers contract and mypy on the public layers."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_layers_import_one_way():
    lint_imports = Path(sys.executable).with_name("lint-imports")  # installed with the test extra
    result = _run(str(lint_imports) if lint_imports.exists() else "lint-imports")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_type_check_of_public_layers():
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_function_takes_the_model_untyped():
    """Functions outside the model class take a typed protocol, never ``model: Any`` or ``model: object``."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "pertpyro").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "model: Any" in line or "model: object" in line
    ]
    assert not offenders, offenders
