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


def _anchors(page: pathlib.Path) -> set:
    """The fragments a page's headings give links on GitHub (text lower-cased, markup and punctuation but '-' and
    '_' dropped, spaces to '-', '-1', '-2', … for repeats), headings inside code fences left out, and explicit
    <a id="…"> / <a name="…"> anchors."""
    found, seen, fenced = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        heading = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).lower()
            slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
        found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
    return found


def test_links_to_a_section_name_one_that_exists():
    """A link's #fragment must be a heading's (or an explicit anchor's) of the page it points to: a renamed or bold-
    text "section" left links that open the page at its top."""
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or "#" not in target:
                continue
            file, fragment = target.split("#", 1)
            dest = page.parent / file if file else page
            if dest.suffix == ".md" and dest.exists() and fragment not in _anchors(dest):
                broken.append((page.relative_to(ROOT).as_posix(), target))
    assert not broken, broken
    assert {"results-nvidia-h100-80gb-hbm3-2026-12-05", "files-larger-than-the-host"} <= (
        _anchors(ROOT / "docs" / "training.md") | _anchors(ROOT / "docs" / "comfyui.md"))


def test_the_readme_is_a_front_door_not_a_log():
    assert (ROOT / "README.md").stat().st_size <= 25_000


def _commands(page: pathlib.Path) -> list:
    """The shell commands of a page's ```bash blocks: continuation lines joined, comments dropped, `VAR="..."`
    definitions expanded, each `&&` part apart."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
        names = {}
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).strip()
            define = re.fullmatch(r'(\w+)="([^"]*)"', line)
            if define:
                names[define.group(1)] = define.group(2)
                continue
            for name, value in names.items():
                line = line.replace("$" + name, value)
            out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def _help_call(command: str):
    """The --help call that shows a command exists: (argv, what) for the pack's CLI and for the bench/ and
    experiments/ scripts, None for anything else."""
    import sys
    words = command.split()
    while words and (words[0] == "nohup" or re.fullmatch(r"\w+=\S*", words[0])):   # nohup, VAR=value
        words = words[1:]
    if not words or words[0] not in (".venv/bin/python", "python3", "python"):
        return None
    if words[1:3] == ["-m", "comfyui_salt"] and len(words) > 3:
        return [sys.executable, "-m", "comfyui_salt", words[3], "--help"], f"comfyui_salt {words[3]}"
    if len(words) > 1 and words[1].endswith(".py") and words[1].split("/")[0] in ("bench", "experiments"):
        return [sys.executable, str(ROOT / words[1]), "--help"], words[1]
    return None


def test_every_command_of_the_readme_and_the_docs_runs_at_help_level():
    """Each CLI command and each bench/ or experiments/ script a page tells the reader to run answers --help
    (the same command and script once), and the README's setup scripts exist."""
    import subprocess
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    commands = [c for page in pages for c in _commands(page)]
    readme = _commands(ROOT / "README.md")
    assert "bash .ci/setup" in readme and ".venv/bin/pytest -q" in readme and ".venv/bin/python -m comfyui_salt demo" \
        in readme
    assert (ROOT / ".ci" / "setup").is_file() and (ROOT / ".ci" / "run").read_text().strip().endswith(
        ".venv/bin/pytest -q")
    outputs = ("--write", "--out", "--export", ">")              # what a command writes need not exist yet
    scripts = {w for c in commands for before, w in zip([""] + c.split(), c.split())
               if re.fullmatch(r"(bench|experiments|\.ci)/[\w./-]+", w) and before not in outputs}
    assert not [w for w in scripts if not (ROOT / w).exists()], [w for w in scripts if not (ROOT / w).exists()]
    calls = {}
    for command in commands:
        call = _help_call(command)
        if call:
            calls.setdefault(call[1], call[0])
    assert len(calls) >= 8, sorted(calls)
    failed = []
    for what, argv in sorted(calls.items()):
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or "usage" not in done.stdout.lower():
            failed.append((what, done.returncode, done.stderr[-300:]))
    assert not failed, failed
