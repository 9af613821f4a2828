"""The documentation site (`make site`) builds in MkDocs' strict mode, from the repository alone.

One strict build of the real repository (shared by this module's tests), then small builds of a
made-up repository to see the strict mode catch what it must: a broken link fails the build.
"""

from __future__ import annotations

import functools
import json
import os
import textwrap
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cookbook import catalog, docs, site
from cookbook.testing.browser import browser_fixture  # noqa: F401
from cookbook.testing.http_server import serving

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

ROOT = catalog.repo_root(Path(__file__))
CACHE = ROOT / ".cookbook" / "cache"

pytestmark = pytest.mark.xdist_group("site")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("site")
    result = site.build(ROOT, work / "out", work / "src", CACHE)
    assert result.returncode == 0, result.stdout + result.stderr
    return work / "out"


def test_every_example_has_a_page_made_from_its_readme(built: Path) -> None:
    for example in catalog.examples(ROOT):
        page = (built / "examples" / example.name / "index.html").read_text()
        title = (example.path / "README.md").read_text().splitlines()[0].removeprefix("# ")
        assert title.split(" — ")[0] in page
        assert f"{docs.crash_point_count(example)} crash points" in page


def test_the_home_page_carries_the_catalog_with_links_to_the_example_pages(built: Path) -> None:
    home = (built / "index.html").read_text()
    for example in catalog.examples(ROOT):
        assert f'href="examples/{example.name}/"' in home
        assert example.pattern.split("`")[0].replace("&", "&amp;") in home


def test_promise_trees_are_mermaid_diagrams_served_with_the_site(built: Path) -> None:
    saga = (built / "examples" / "saga" / "index.html").read_text()
    assert '<pre class="mermaid">' in saga
    script = built / site.MERMAID_PAGE_PATH
    assert script.stat().st_size > 1_000_000
    assert site.MERMAID_PAGE_PATH in saga


def test_toolkit_production_and_source_pages_exist_and_are_searchable(built: Path) -> None:
    for page in ("toolkit/how-the-crash-harness-works", "toolkit/benchmark", "production"):
        assert (built / page / "index.html").is_file(), page
    workflow = (built / "source/examples/saga/saga/workflow.py/index.html").read_text()
    assert "book_trip" in workflow
    index = json.loads((built / "search" / "search_index.json").read_text())
    assert any("saga" in doc["location"] for doc in index["docs"])


def made_up_repository(root: Path, readme_body: str) -> Path:
    example = root / "examples" / "demo"
    (example / "demo").mkdir(parents=True)
    (example / "demo" / "workflow.py").write_text("def run() -> None: ...\n")
    (example / "pyproject.toml").write_text(
        textwrap.dedent("""\
        [project]
        name = "demo"
        [tool.cookbook]
        pattern = "a pattern"
        summary = "what it shows"
        worker = "demo.worker"
        group = "demo"
        """)
    )
    (example / "README.md").write_text(f"# demo\n\n{readme_body}\n")
    (root / "shared").mkdir()
    (root / "tests" / "crash" / "points").mkdir(parents=True)
    (root / "README.md").write_text(
        "# Cookbook\n\nintro\n\n## Examples\n\n<!-- catalog -->\n<!-- end catalog -->\n\n"
        "## How it works\n\nsee [the demo](examples/demo) and [its code](examples/demo/demo).\n"
    )
    return root


def test_links_to_source_files_folders_and_readmes_become_site_pages(tmp_path: Path) -> None:
    root = made_up_repository(
        tmp_path / "repo",
        "[code](demo/workflow.py), [back over\ntwo lines](../../README.md#how-it-works)",
    )
    result = site.build(root, tmp_path / "out", tmp_path / "src", CACHE)
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "src" / "docs" / "examples" / "demo.md").read_text()
    assert "[code](../source/examples/demo/demo/workflow.py.md)" in page
    assert "[back over\ntwo lines](../toolkit/how-it-works.md#how-it-works)" in page


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    root = made_up_repository(tmp_path / "repo", "see [the workflow](demo/wrokflow.py)")
    result = site.build(root, tmp_path / "out", tmp_path / "src", CACHE)
    assert result.returncode != 0
    assert "wrokflow.py" in result.stdout + result.stderr


def test_readme_sections_split_at_level_two_headings_outside_code() -> None:
    intro, parts = site.sections("# T\n\nhi\n\n## A\n\n```\n## not a heading\n```\n\n## B\n\nb\n")
    assert intro == "# T\n\nhi\n\n"
    assert [title for title, _ in parts] == ["A", "B"]
    assert "## not a heading" in parts[0][1]
    assert site.promoted("### Sub\n```\n### kept\n```\n") == "## Sub\n```\n### kept\n```\n"


# -- in a real browser ----------------------------------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(built: Path) -> Iterator[str]:
    """The built site over HTTP (as `make site-serve` or any static host serves it)."""
    with serving(functools.partial(QuietHandler, directory=str(built))) as url:
        yield url


# The README's screenshots: COOKBOOK_SCREENSHOTS=shared/screenshots pytest tests/test_site.py
SCREENSHOTS = os.environ.get("COOKBOOK_SCREENSHOTS")


def test_pages_load_without_console_errors_and_trees_render_as_diagrams(
    served: str, browser: Callable[[], Chrome]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    for path, name in (("/", "home"), ("/examples/saga/", "saga"), ("/examples/hello/", "hello")):
        driver.get(served + path)
        WebDriverWait(driver, 20).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        assert "Resonate Python Cookbook" in driver.title
        if name != "home":
            # Material swaps each <pre class="mermaid"> for the diagram Mermaid drew.
            WebDriverWait(driver, 20).until(
                lambda d: (
                    not d.find_elements(By.CSS_SELECTOR, "pre.mermaid")
                    and d.find_elements(By.CSS_SELECTOR, "div.mermaid")
                )
            )
            diagram = driver.find_elements(By.CSS_SELECTOR, "div.mermaid")[0]
            assert diagram.size["height"] > 100, "the diagram was drawn with no height"
            svg = driver.execute_script(
                "return (await mermaid.render('probe', arguments[0])).svg",
                "graph TD\n  a --> b",
            )
            assert svg.startswith("<svg")
        # selenium leaves get_log unannotated (it returns the driver's JSON): no typed way to call.
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[no-untyped-call]
        assert not errors, f"{path}: {errors}"
        if SCREENSHOTS and name in ("home", "saga"):
            # Wide enough for the navigation, scrolled to the catalog or to the promise tree.
            driver.set_window_size(1400, 1000)
            shown = driver.find_element(By.ID, "examples") if name == "home" else diagram
            driver.execute_script("arguments[0].scrollIntoView()", shown)
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(Path(SCREENSHOTS) / f"{name}.png"))
            driver.set_window_size(1000, 800)
