"""The README and docs/ stand on their own: no references to files outside the repository, no
broken relative links, code references to docs/behaviour.md name sections that exist, and the
Prefect version in prefect.yaml is one pyproject.toml allows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BEHAVIOUR = ROOT / "docs" / "behaviour.md"
CODE_DIRS = ("broadcasts", "tasks", "flows", "deployments", "simulator", "tests")

# Documents that live outside this repository and must not be cited by the product.
OUTSIDE_DOCUMENTS = re.compile(r"\b(?:SPEC|DESIGN)\.md\b|\bSPEC\s*(?:§|section\b)")
# [text](target) and [text](target "title"); images too.
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# "docs/behaviour.md §4", "docs/behaviour.md §4 rule 5", "docs/behaviour.md section 3".
BEHAVIOUR_REFERENCE = re.compile(r"docs/behaviour\.md,?\s+(?:§\s*|section\s+)(\d+)")
SECTION_HEADING = re.compile(r"^#{1,6}\s+§?\s*(\d+)[.\s]", re.MULTILINE)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text: str) -> list[str]:
    links = []
    for target in MARKDOWN_LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same file
        links.append(target.split("#", 1)[0])
    return links


def behaviour_sections() -> set[int]:
    return {int(n) for n in SECTION_HEADING.findall(BEHAVIOUR.read_text(encoding="utf-8"))}


def prefect_requirement(pyproject_text: str) -> Requirement:
    dependencies = tomllib.loads(pyproject_text)["project"]["dependencies"]
    matches = [Requirement(d) for d in dependencies if Requirement(d).name.lower() == "prefect"]
    assert len(matches) == 1, f"pyproject.toml should list prefect once, found {len(matches)}"
    return matches[0]


def test_behaviour_contract_exists_with_its_eight_sections():
    assert BEHAVIOUR.is_file(), "docs/behaviour.md is missing"
    assert behaviour_sections() >= set(range(1, 9)), (
        f"docs/behaviour.md has sections {sorted(behaviour_sections())}; expected 1 to 8"
    )


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_cite_no_document_outside_the_repository(path: Path):
    offenders = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OUTSIDE_DOCUMENTS.search(line)
    ]
    assert offenders == [], f"{path.name} cites documents that are not in the repository:\n" + "\n".join(offenders)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(path: Path):
    text = path.read_text(encoding="utf-8")
    broken = [link for link in relative_links(text) if link and not (path.parent / link).exists()]
    assert broken == [], f"{path.name} links to missing files: {broken}"


def test_readme_opens_with_its_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert first_block is not None, "README.md should open with a sh code block"
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def test_code_references_name_sections_of_the_behaviour_contract():
    sections = behaviour_sections()
    missing = []
    for directory in CODE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for match in BEHAVIOUR_REFERENCE.finditer(text):
                if int(match.group(1)) not in sections:
                    line = text.count("\n", 0, match.start()) + 1
                    missing.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)}")
    assert missing == [], "references to sections docs/behaviour.md does not have:\n" + "\n".join(missing)


def test_prefect_yaml_version_is_allowed_by_pyproject():
    requirement = prefect_requirement((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    version = Version(str(project["prefect-version"]))
    assert requirement.specifier.contains(version, prereleases=True), (
        f"prefect.yaml has prefect-version {version}, which pyproject.toml's {requirement} does not allow"
    )


def test_the_section_reference_pattern_finds_what_the_code_writes():
    # Keeps the scan above honest: if the pattern stopped matching, the test would pass vacuously.
    doc = "docs/behaviour.md"  # split so that this file's own source does not match the scan
    text = f"Rule 5 of {doc} §4, see {doc} section 3 and {doc} §12."
    assert [int(n) for n in BEHAVIOUR_REFERENCE.findall(text)] == [4, 3, 12]
    assert relative_links("[a](docs/x.md#y) [b](https://e.org) [c](#z)") == ["docs/x.md"]
