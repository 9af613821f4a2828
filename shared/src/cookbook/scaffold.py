"""`make new NAME=<name>`: a new example folder from the template, ready to run and crash-test.

The template is the smallest complete example (a workflow with two provider calls, a worker, a
demo, a test, a README with the standard sections) under `template/`, with `{{name}}`, `{{pkg}}`
and `{{title}}` placeholders and a `__pkg__` folder for the package. Its worker is added to
docker-compose.yml as a service under its own profile; the README's catalog table follows from
its `[tool.cookbook]` (`pattern`, `summary`) the next time `cookbook docs` runs (`make new` does).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

from cookbook import catalog, docs

TEMPLATE = Path(__file__).parent / "template"
NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ScaffoldError(ValueError):
    pass


def scaffold(name: str, root: Path) -> Path:
    if not NAME.match(name):
        raise ScaffoldError(
            f"NAME={name!r}: use lowercase letters, digits and single dashes, e.g. order-refunds"
        )
    target = root / "examples" / name
    if target.exists():
        raise ScaffoldError(f"examples/{name} already exists")
    pkg = name.replace("-", "_")
    values = {"{{name}}": name, "{{pkg}}": pkg, "{{title}}": name.replace("-", " ").capitalize()}
    for source in sorted(TEMPLATE.rglob("*.tmpl")):
        relative = source.relative_to(TEMPLATE).as_posix().replace("__pkg__", pkg)
        text = source.read_text()
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        destination = target / relative.removesuffix(".tmpl")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text)
    # Names change line lengths and where imports sort: let ruff settle both (a dev tool).
    ruff = [sys.executable, "-m", "ruff"]
    with contextlib.suppress(OSError):
        subprocess.run(
            [*ruff, "check", "--select", "I", "--fix", "--quiet", str(target)], check=False
        )
        subprocess.run([*ruff, "format", "--quiet", str(target)], check=False)
    readme = target / "README.md"
    readme.write_text(docs.render(readme)[0])
    _add_to_compose(root / "docker-compose.yml", name, pkg)
    return target


COMPOSE_SERVICE = """\
  {name}-worker:
    <<: *cookbook
    profiles: [{name}]
    command: [python, -m, {pkg}.worker]
    environment: {{<<: *resonate-env, PROVIDER_API_URL: http://sandbox:8100}}
    depends_on: {{resonate: *healthy, sandbox: *healthy}}

"""


def _add_to_compose(compose: Path, name: str, pkg: str) -> None:
    """The example's worker as a compose service under its own profile, after the others."""
    if not compose.is_file():
        return
    text = compose.read_text()
    end = text.find("\nnetworks:\n")
    if end == -1:
        raise ScaffoldError(f"{compose}: no top-level `networks:` to add {name}-worker before")
    block = COMPOSE_SERVICE.format(name=name, pkg=pkg)
    compose.write_text(text[: end + 1] + block + text[end + 1 :])


def main(name: str) -> int:
    root = catalog.repo_root()
    target = scaffold(name, root)
    print(
        f"created {target.relative_to(root)}; next: `make run-{name}`, `make crash-{name}`, "
        "then make it yours (fill in the TODOs in its README, and its pattern and summary in "
        "its pyproject.toml: the README's catalog row is made from them)"
    )
    return 0
