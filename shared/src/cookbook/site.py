"""`make site`: the documentation site, built from the repository with MkDocs (Material theme).

Nothing is written twice. The pages are made from what the repository already has:
  - the home page: the top-level README's introduction and quick start, and the catalog table
    (cookbook.docs.catalog_table: every example's pattern, summary and crash-point count);
  - one page per example: its README, whose Mermaid promise trees become diagrams;
  - the toolkit pages: the top-level README's other sections, one page each;
  - "Running in production": shared/deploy/README.md;
  - a page per source file or folder a README links to, so "see saga/workflow.py" is a link that
    works on the site too.
Links are rewritten to those pages; a link to anything that does not exist is left alone, and
the strict build (`mkdocs build --strict`, which `make test` runs) fails on it.

Mermaid's JavaScript comes from the npm registry (a pinned version, checked against the
registry's sha512 integrity), cached under .cookbook/cache/, and is served with the site: the
theme would otherwise fetch it from a CDN at page load, which a reader offline (or these machines)
cannot reach.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cookbook import catalog, clients, docs

MERMAID_VERSION = "11.17.2"
MERMAID_TARBALL = f"https://registry.npmjs.org/mermaid/-/mermaid-{MERMAID_VERSION}.tgz"
# The registry's `dist.integrity` for that tarball (`npm view mermaid@<version> dist.integrity`).
MERMAID_INTEGRITY = (
    "sha512-V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/qt5gH"
    "O73aCleBBg=="
)
MERMAID_PAGE_PATH = "assets/javascripts/mermaid.min.js"

HOME_SECTIONS = ("Quick start", "Examples")
LANGUAGES = {
    ".py": "python",
    ".toml": "toml",
    ".yml": "yaml",
    ".yaml": "yaml",
    ".json": "json",
    ".sh": "bash",
    ".sql": "sql",
    ".txt": "text",
    ".tmpl": "text",
    ".md": "markdown",
    ".html": "html",
    ".cfg": "ini",
}
NAMED_LANGUAGES = {"Dockerfile": "dockerfile", "Makefile": "make"}
IMAGES = {".png", ".svg", ".jpg", ".jpeg", ".gif"}
SKIPPED_PARTS = {"__pycache__", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
# The text of a link may wrap over lines; its target may not.
LINK = re.compile(r"(?P<head>!?\[[^\]]*\]\()(?P<target>[^)\s]+)(?P<tail>\))")
HEADING = re.compile(r"^(?P<level>#{1,6}) +(?P<title>.+?)[ \t]*$", re.MULTILINE)


class SiteError(RuntimeError):
    pass


def slug(title: str) -> str:
    """The anchor Python-Markdown's toc gives a heading (its default slugify)."""
    text = re.sub(r"[`*_]", "", title)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def sections(markdown: str) -> tuple[str, list[tuple[str, str]]]:
    """A README split at its `## ` headings (outside code): (introduction, [(title, body)])."""
    fences = [m.span() for m in FENCE.finditer(markdown)]
    starts = [
        m
        for m in re.finditer(r"^## +(.+?)[ \t]*$", markdown, re.MULTILINE)
        if not any(a <= m.start() < b for a, b in fences)
    ]
    intro = markdown[: starts[0].start()] if starts else markdown
    parts = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(markdown)
        parts.append((match[1], markdown[match.end() : end].strip("\n") + "\n"))
    return intro, parts


def promoted(body: str) -> str:
    """A README section as a page of its own: its `###` headings become `##` (outside code)."""
    out, last = [], 0
    for match in FENCE.finditer(body):
        out.append(re.sub(r"^#(#{2,6} )", r"\1", body[last : match.start()], flags=re.MULTILINE))
        out.append(match[0])
        last = match.end()
    out.append(re.sub(r"^#(#{2,6} )", r"\1", body[last:], flags=re.MULTILINE))
    return "".join(out)


@dataclass
class Site:
    """The docs directory being assembled: pages by path, and what they link to."""

    root: Path
    docs_dir: Path
    # Repository path of a markdown source -> the page made from it.
    page_of: dict[str, str] = field(default_factory=dict)
    # "repository path#anchor" of the top-level README's headings -> "page#anchor".
    anchor_of: dict[str, str] = field(default_factory=dict)
    wanted_sources: list[str] = field(default_factory=list)

    def write(self, page: str, text: str) -> None:
        path = self.docs_dir / page
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    # -- links ------------------------------------------------------------------------------------

    def target_page(self, repo_path: str, anchor: str) -> str | None:
        """The page (and anchor) a link to `repo_path#anchor` should point at on the site."""
        if anchor and f"{repo_path}#{anchor}" in self.anchor_of:
            return self.anchor_of[f"{repo_path}#{anchor}"]
        path = self.root / repo_path
        if repo_path in self.page_of:
            return self.page_of[repo_path] + (f"#{anchor}" if anchor else "")
        if path.is_dir() and f"{repo_path}/README.md".lstrip("/") in self.page_of:
            return self.page_of[f"{repo_path}/README.md".lstrip("/")]
        if not path.exists() or set(path.relative_to(self.root).parts) & SKIPPED_PARTS:
            return None
        if path.suffix.lower() in IMAGES:
            page = f"assets/{repo_path}"
            destination = self.docs_dir / page
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
            return page
        self.wanted_sources.append(repo_path)
        return source_page(repo_path, path.is_dir())

    def rewrite_links(self, text: str, source: str, page: str) -> str:
        """Every relative link of `text` (from repository file `source`) as seen from `page`."""
        base = PurePosixPath(source).parent

        def rewrite(match: re.Match[str]) -> str:
            target = match["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
                return match[0]
            path, _, anchor = target.partition("#")
            repo_path = normalised(base / path) if path else source
            if repo_path is None:
                return match[0]
            found = self.target_page(repo_path, anchor)
            if found is None:
                return match[0]  # the strict build reports it
            found_path, _, found_anchor = found.partition("#")
            relative = os.path.relpath(found_path, PurePosixPath(page).parent.as_posix())
            suffix = f"#{found_anchor}" if found_anchor else ""
            return f"{match['head']}{relative}{suffix}{match['tail']}"

        out, last = [], 0
        for fence in FENCE.finditer(text):
            out.append(LINK.sub(rewrite, text[last : fence.start()]))
            out.append(fence[0])
            last = fence.end()
        out.append(LINK.sub(rewrite, text[last:]))
        return "".join(out)

    # -- source pages -----------------------------------------------------------------------------

    def write_sources(self) -> None:
        done: set[str] = set()
        while self.wanted_sources:
            repo_path = self.wanted_sources.pop()
            if repo_path in done:
                continue
            done.add(repo_path)
            path = self.root / repo_path
            page = source_page(repo_path, path.is_dir())
            if path.is_dir():
                self.write(page, self.listing(repo_path, page))
            else:
                self.write(page, code_page(repo_path, path))

    def listing(self, repo_path: str, page: str) -> str:
        lines = [f"# {repo_path}/", ""]
        for child in sorted((self.root / repo_path).iterdir(), key=lambda p: (p.is_file(), p.name)):
            # MkDocs leaves dotfiles (.gitignore) out of a site: no page for them either.
            if child.name in SKIPPED_PARTS or child.suffix == ".pyc" or child.name.startswith("."):
                continue
            child_path = f"{repo_path}/{child.name}"
            target = self.target_page(child_path, "")
            if target is None:
                continue
            relative = os.path.relpath(target, PurePosixPath(page).parent.as_posix())
            name = child.name + ("/" if child.is_dir() else "")
            lines.append(f"- [{name}]({relative})")
        return "\n".join(lines) + "\n"


def normalised(path: PurePosixPath) -> str | None:
    """A repository-relative path with `..` resolved; None if it leaves the repository."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return "/".join(parts)


def source_page(repo_path: str, is_dir: bool) -> str:
    return f"source/{repo_path}/index.md" if is_dir else f"source/{repo_path}.md"


def code_page(repo_path: str, path: Path) -> str:
    language = NAMED_LANGUAGES.get(path.name) or LANGUAGES.get(path.suffix, "text")
    text = path.read_text(errors="replace")
    fence = "````" if "```" in text else "```"
    return f"# {repo_path}\n\n{fence}{language}\n{text.rstrip()}\n{fence}\n"


# -- the pages ------------------------------------------------------------------------------------


def assemble(root: Path, docs_dir: Path, mermaid: Path) -> list[str]:
    """Write every page and asset into `docs_dir`; returns the nav as YAML lines."""
    site = Site(root, docs_dir)
    examples = catalog.examples(root)
    readme = (root / "README.md").read_text()
    intro, parts = sections(readme)
    toolkit = [(title, body) for title, body in parts if title not in HOME_SECTIONS]

    site.page_of["README.md"] = "index.md"
    for example in examples:
        site.page_of[f"examples/{example.name}/README.md"] = f"examples/{example.name}.md"
    site.page_of["shared/deploy/README.md"] = "production.md"
    for title, body in parts:
        page = "index.md" if title in HOME_SECTIONS else f"toolkit/{slug(title)}.md"
        site.anchor_of[f"README.md#{slug(title)}"] = f"{page}#{slug(title)}"
        for heading in HEADING.finditer(body):
            anchor = slug(heading["title"])
            site.anchor_of.setdefault(f"README.md#{anchor}", f"{page}#{anchor}")

    home = [intro.rstrip() + "\n"]
    for title, body in parts:
        if title == "Examples":
            body = docs.CATALOG.sub(
                lambda _: docs.catalog_table(examples, lambda name: f"examples/{name}.md"), body
            )
        if title in HOME_SECTIONS:
            home.append(f"\n## {title}\n\n{body}")
    site.write("index.md", site.rewrite_links("".join(home), "README.md", "index.md"))

    for title, body in toolkit:
        page = f"toolkit/{slug(title)}.md"
        text = f"# {title}\n\n{promoted(body)}"
        site.write(page, site.rewrite_links(text, "README.md", page))

    for example in examples:
        page = f"examples/{example.name}.md"
        source = f"examples/{example.name}/README.md"
        text = (root / source).read_text()
        browse = f"examples/{example.name}"
        site.wanted_sources.append(browse)
        note = (
            f"\n\n*Source: [examples/{example.name}/]"
            f"({os.path.relpath(source_page(browse, True), 'examples')}) · "
            f"{docs.crash_point_count(example)} crash points*\n"
        )
        first_line_end = text.find("\n")
        text = text[:first_line_end] + note + text[first_line_end:]
        site.write(page, site.rewrite_links(text, source, page))

    deploy = "shared/deploy/README.md"
    if (root / deploy).is_file():
        site.write(
            "production.md",
            site.rewrite_links((root / deploy).read_text(), deploy, "production.md"),
        )

    site.write_sources()
    destination = docs_dir / MERMAID_PAGE_PATH
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mermaid, destination)

    nav = ["nav:", "  - Home: index.md", "  - Examples:"]
    nav += [f"      - {e.name}: examples/{e.name}.md" for e in examples]
    nav.append("  - Toolkit:")
    nav += [f"      - {yaml_string(t)}: toolkit/{slug(t)}.md" for t, _ in toolkit]
    if (root / deploy).is_file():
        nav.append("  - Running in production: production.md")
    return nav


def yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


CONFIG = """\
site_name: Resonate Python Cookbook
site_description: Runnable, crash-tested examples of durable execution with the Resonate Python SDK
docs_dir: docs
strict: true
theme:
  name: material
  # System fonts: Google Fonts is a request to a third party on every page, and fails offline.
  font: false
  features:
    - navigation.sections
    - navigation.top
    - search.highlight
    - content.code.copy
  palette:
    - scheme: default
      primary: indigo
plugins:
  - search
markdown_extensions:
  - tables
  - admonition
  - attr_list
  - toc:
      permalink: true
  - pymdownx.highlight
  - pymdownx.superfences:
      custom_fences:
        - name: mermaid
          class: mermaid
          format: !!python/name:pymdownx.superfences.fence_code_format
extra_javascript:
  - {mermaid}
# Source pages are reached from the pages that link to them, not from the navigation.
not_in_nav: |
  /source/**
validation:
  omitted_files: warn
  absolute_links: warn
  unrecognized_links: warn
  anchors: warn
"""


def prepare(root: Path, work: Path, mermaid: Path) -> Path:
    """Assemble the docs and the MkDocs config under `work`; returns the config file."""
    if work.exists():
        shutil.rmtree(work)
    docs_dir = work / "docs"
    docs_dir.mkdir(parents=True)
    nav = assemble(root, docs_dir, mermaid)
    config = work / "mkdocs.yml"
    config.write_text(CONFIG.format(mermaid=MERMAID_PAGE_PATH) + "\n".join(nav) + "\n")
    return config


# Material prints a banner about its successor on every build; the README says it once.
QUIET = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def build(root: Path, out: Path, work: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of the assembled site into `out`; the completed process."""
    config = prepare(root, work, mermaid_js(cache))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(config),
            "-d",
            str(out.resolve()),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=QUIET,
    )


def command(root: Path, *, serve: bool, say: Callable[[str], None]) -> int:
    """`make site` (build into .cookbook/site/) and `make site-serve` (serve on :8000)."""
    state = root / ".cookbook"
    if serve:
        config = prepare(root, state / "site-src", mermaid_js(state / "cache"))
        say("serving the site on http://127.0.0.1:8000 (rerun to pick up README changes)")
        argv = [sys.executable, "-m", "mkdocs", "serve", "-f", str(config), "-a", "127.0.0.1:8000"]
        return subprocess.run(argv, check=False, env=QUIET).returncode
    out = state / "site"
    result = build(root, out, state / "site-src", state / "cache")
    if result.returncode != 0:
        say(result.stdout + result.stderr)
        say("cookbook site: the strict build failed (above: each broken link or missing page)")
        return result.returncode
    say(f"site built: {out.relative_to(root)}/index.html ({len(list(out.rglob('*.html')))} pages)")
    return 0


# -- Mermaid, from the npm registry ---------------------------------------------------------------


def mermaid_js(cache: Path) -> Path:
    """mermaid.min.js of the pinned version, downloaded once and checked against its integrity."""
    cached = cache / f"mermaid-{MERMAID_VERSION}.min.js"
    if cached.is_file():
        return cached
    response = clients.get(MERMAID_TARBALL, timeout=120, follow_redirects=True)
    response.raise_for_status()
    digest = base64.b64encode(hashlib.sha512(response.content).digest()).decode()
    if f"sha512-{digest}" != MERMAID_INTEGRITY:
        raise SiteError(f"{MERMAID_TARBALL}: its sha512 is not the pinned integrity")
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tarball:
        member = tarball.extractfile("package/dist/mermaid.min.js")
        if member is None:
            raise SiteError(f"{MERMAID_TARBALL}: no package/dist/mermaid.min.js")
        script = member.read()
    cache.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    partial.write_bytes(script)
    partial.replace(cached)
    return cached
