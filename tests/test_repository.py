"""The repository as a newcomer finds it: its own design document and licence, no stray binaries, and
code, tests, scripts and docs that point only into the repository and speak of the project only."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = [p for d in ("torchbp", "tests", "scripts", "docs") for p in (ROOT / d).rglob("*")
        if p.suffix in (".py", ".sh", ".md")] + [ROOT / "README.md"]


def test_design_document_and_license_are_in_the_repository():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    for heading in ("## The derivation", "## Layout", "## Rules for a δ Function", "## Comparison policy",
                    "## What a verdict means"):
        assert heading in design
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "the torchbp authors" in license_text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_no_wheels_or_archives_at_the_root():
    assert not [p.name for p in ROOT.iterdir() if p.suffix in (".whl", ".zip", ".gz", ".tar")]


def test_references_point_into_the_repository():
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in TEXT if p != Path(__file__).resolve()
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if "DESIGN.md" in line or "shared design notes" in line]
    assert not bad, f"a design document outside the repository is named at {bad}; use docs/design.md"


def test_no_issue_numbers_in_code_tests_scripts_and_docs():
    pattern = re.compile(r"\bissue[ _#]?\d+", re.IGNORECASE)
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in TEXT if p != Path(__file__).resolve()
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not bad, bad
