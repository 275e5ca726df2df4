"""The documents the code cites are in the repository: every `docs/method.md §N` citation names a section that
exists, nothing cites the development notes outside the repository, and every relative link in README.md and docs/
resolves to a file."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [p for pattern in ("*.py", "*.js", "*.md") for p in ROOT.rglob(pattern)
           if not any(part.startswith(".") or part in ("out", "runs") for part in p.relative_to(ROOT).parts)]
OUTSIDE = re.compile(r"SALT_METHOD|REFERENCE\.md|REFERENCE §|TOY_NOTES|STYLE \d|STYLE\.md")


def test_every_method_citation_names_a_section_of_docs_method():
    sections = set(re.findall(r"^## §(\d+)", (ROOT / "docs" / "method.md").read_text(), re.M))
    cited = {(p.relative_to(ROOT).as_posix(), n) for p in SOURCES
             for n in re.findall(r"docs/method\.md §(\d+)", p.read_text(encoding="utf-8"))}
    assert cited and sections >= {"0", "1", "2", "3", "4", "6"}
    assert not [c for c in cited if c[1] not in sections], [c for c in cited if c[1] not in sections]


def test_nothing_cites_notes_outside_the_repository():
    found = [(p.relative_to(ROOT).as_posix(), m.group(0)) for p in SOURCES if p.name != "test_docs.py"
             for m in OUTSIDE.finditer(p.read_text(encoding="utf-8"))]
    assert not found, found


def test_relative_links_in_readme_and_docs_resolve():
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append((page.relative_to(ROOT).as_posix(), target))
    assert not broken, broken
