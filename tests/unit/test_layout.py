"""The layers stay layers: the model library imports nothing of export or serving, export nothing
of serving, the benchmarks nothing of the server side, the client nothing of ours. Read from the
source (every import statement, function-local ones included), so a hidden cycle fails here."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"moe", "export", "serving", "bench", "moe_client"}
ALLOWED = {
    "moe": {"moe"},
    "export": {"moe", "export"},
    "bench": {"moe", "bench", "moe_client"},
    "serving": {"moe", "export", "serving", "bench", "moe_client"},
    "moe_client": {"moe_client"},
}
FOLDERS = {"moe_client": ROOT / "client" / "moe_client"}


def imported_packages(path: Path, package: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(package if node.level else (node.module or "").split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_layers_below(package):
    folder = FOLDERS.get(package, ROOT / package)
    files = sorted(folder.rglob("*.py"))
    assert files, folder
    for path in files:
        wrong = imported_packages(path, package) - ALLOWED[package]
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_resources_travel_inside_the_packages():
    """The folders the packages read at run time are links into them, so a wheel carries them."""
    for link, target in (
        ("moe/checkpoints", "checkpoints"),
        ("export/templates/model_repository", "model_repository"),
        ("export/templates/ensemble", "ensemble"),
        ("serving/third_party", "third_party"),
    ):
        assert (ROOT / link).resolve() == (ROOT / target).resolve(), link
