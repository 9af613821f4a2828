"""The rules every example's runtime code keeps, checked statically (examples/*/<package>/).

- It never parses ids the SDK generates. A step's id is `<parent id>:<n>` today, but that is how
  the SDK names things, not an API: code that splits ids at ':', matches them with a regex, or
  builds `<id>:1` breaks on another SDK release or server, and teaches a user to do the same.
  Example code reads state through documented API and the ids it chose itself.
- It has no `# type: ignore`: a user copies it, so it is typed the way it should be written.
- Every function it registers with Resonate names its retry policy: under SDK 0.8.1's default a
  workflow that raises before its first durable call is retried 30 times with doubling delays
  while holding its lease, which is never what an example means.
- It reads its environment when it runs, not when its modules are imported. Configuration read
  at import is fixed for whoever imported it first: the tests fork an example's workers from a
  process that imported its modules for another test, with another server's address
  (cookbook.crash.zygote), and a user's test that sets a variable would see it ignored.
- It never reads a provider's answer unguarded: `response.json()[...]` sits in a `try` that
  catches what an unreadable body raises (ValueError, and KeyError or LookupError). A 2xx whose
  body is not the answer (a proxy's HTML page, a cut-off body) may mean the call landed: each
  example turns it into its transient, may-have-landed failure, never a bug-looking error that
  skips its compensation. (A demo reading its own gateway's answers is left alone: it is the
  client, and a traceback there is the right report. The check sees the idiom, not every
  aliasing of a body.)
- Every latent promise names its timeout: `ctx.promise()` without one gets SDK 0.8.1's default of
  a day, capped by the execution's deadline, and a wait meant for days fails the execution after
  one (order-state-machine's orders did).
- It imports no `cookbook` module: tests/test_examples.py checks that; here that check is only
  shown to catch an offender.
- Its crash scenarios (`[[tool.cookbook.scenarios]]`, the executions the matrix starts, which
  users copy as the example's sample data) send the server no email address, unless the example
  seals what it sends (`encryptor`): the server stores every argument, and a signal's value, in
  plaintext, so personal data goes by reference (`cus_...`) and the receiving system resolves it.

Each check is also run on deliberately bad snippets, so that it cannot go blind unnoticed.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cookbook import catalog

from tests import test_examples

ROOT = catalog.repo_root(Path(__file__))

SPLITTERS = {"split", "rsplit", "partition", "rpartition", "index", "rindex", "find", "rfind"}
REGEX_FUNCTIONS = {"split", "match", "fullmatch", "search", "findall", "finditer", "sub", "subn"}
REGEX_FUNCTIONS |= {"compile"}
# Regex syntax that contains ':' without matching one: (?:...), (?P<name>...), (?i:...), [[:x:]].
REGEX_COLON_SYNTAX = re.compile(r"\(\?[a-zA-Z]*:|\(\?P?<[^>]*>|\[:[a-z]+:\]")
# "{}:{}", "%s:%d", "{0}:1": a format string that joins an id and a step number.
ID_FORMAT = re.compile(r"^(\{[^}]*\}|%[sd]):(\d+|\{[^}]*\}|%[sd])?$")
TYPE_IGNORE = re.compile(r"(^|#)\s*type:\s*ignore\b")

WHY_IDS = "parses an SDK-generated id"
SEE_ALSO = "read state through documented API and ids the example chose itself"


@dataclass(frozen=True)
class Finding:
    line: int
    why: str


def _is_colon(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value == ":"


def _string(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


class SdkIdParsing(ast.NodeVisitor):
    """Finds the ways example code has parsed, or built, the SDK's `<parent>:<n>` ids."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def flag(self, node: ast.AST, how: str) -> None:
        self.findings.append(Finding(getattr(node, "lineno", 0), f"{WHY_IDS}: {how}"))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            separator = node.args[0] if node.args else None
            separator = next((k.value for k in node.keywords if k.arg == "sep"), separator)
            if func.attr in SPLITTERS and _is_colon(separator):
                self.flag(node, f'.{func.attr}(":") takes an id apart at its ":"')
            elif func.attr == "join" and _is_colon(func.value):
                self.flag(node, '":".join(...) builds an id the SDK would generate')
            elif (
                func.attr in REGEX_FUNCTIONS
                and isinstance(func.value, ast.Name)
                and func.value.id in {"re", "regex"}
                and node.args
                and (pattern := _string(node.args[0])) is not None
                and ":" in REGEX_COLON_SYNTAX.sub("", pattern)
            ):
                self.flag(node, f"re.{func.attr}({pattern!r}, ...) matches the ':' of an id")
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        values = node.values
        for index, value in enumerate(values[:-1]):
            text = _string(values[index + 1])
            if not isinstance(value, ast.FormattedValue) or text is None:
                continue
            if not text.startswith(":"):
                continue
            after = values[index + 2] if index + 2 < len(values) else None
            rest = text[1:]
            if rest and rest[0].isdigit():
                self.flag(node, f'f"{{...}}:{rest}" builds a step id')
            elif (
                rest == ""
                and isinstance(after, ast.FormattedValue)
                # host:port, in a URL or an address, is not an id
                and "port" not in ast.unparse(after.value).lower()
            ):
                self.flag(node, 'f"{...}:{...}" builds a step id')
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        text = _string(node.right)
        if isinstance(node.op, ast.Add) and text is not None and re.fullmatch(r":\d+", text):
            self.flag(node, f'... + "{text}" builds a step id')
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and ID_FORMAT.match(node.value):
            self.flag(node, f"the format {node.value!r} builds a step id")


def sdk_id_parsing(source: str) -> list[Finding]:
    checker = SdkIdParsing()
    checker.visit(ast.parse(source))
    return sorted(checker.findings, key=lambda f: f.line)


def type_ignores(source: str) -> list[Finding]:
    return [
        Finding(
            token.start[0],
            "a `# type: ignore`: find a typed way (a retry policy from resonate.retry_policies, "
            "stubs or a typed wrapper for an untyped library)",
        )
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and TYPE_IGNORE.search(token.string)
    ]


def registrations_without_a_retry_policy(source: str) -> list[Finding]:
    """`<resonate>.register(fn, ...)` calls, and `@<resonate>.register` decorators, that leave the
    retry policy to the SDK's default."""
    found = []
    for node in ast.walk(ast.parse(source)):
        decorators = getattr(node, "decorator_list", [])
        calls = [node] if isinstance(node, ast.Call) else []
        calls += [d for d in decorators if isinstance(d, ast.Call)]
        bare = [d for d in decorators if isinstance(d, ast.Attribute) and d.attr == "register"]
        found += [Finding(d.lineno, "@register without a retry_policy") for d in bare]
        for call in calls:
            if (
                isinstance(call.func, ast.Attribute)
                and call.func.attr == "register"
                and "retry_policy" not in {k.arg for k in call.keywords}
            ):
                found.append(Finding(call.lineno, "register(...) without a retry_policy="))
    return sorted(found, key=lambda f: f.line)


class ImportTimeEnvironment(ast.NodeVisitor):
    """Reads of the environment in code that runs at import: outside function bodies, and
    outside the `if __name__ == "__main__":` block a module runs only as a program."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_signature(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._visit_signature(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        return

    def _visit_signature(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        """What runs when the `def` does: its decorators and its default values, not its body."""
        for expression in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            # `environ: Mapping[str, str] = os.environ` binds the live mapping: read per call.
            if expression is not None and ast.unparse(expression) not in ("os.environ", "environ"):
                self.visit(expression)

    def visit_If(self, node: ast.If) -> None:
        if ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"':
            for statement in node.orelse:
                self.visit(statement)
            return
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in ("environ", "environb", "getenv"):
            self.findings.append(Finding(node.lineno, f"reads `{ast.unparse(node)}` at import"))
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in ("environ", "getenv"):
            self.findings.append(Finding(node.lineno, f"reads `{node.id}` at import"))


def environment_read_at_import(source: str) -> list[Finding]:
    checker = ImportTimeEnvironment()
    checker.visit(ast.parse(source))
    return sorted(checker.findings, key=lambda f: f.line)


def _caught(handler: ast.ExceptHandler) -> set[str]:
    if handler.type is None:
        return {"BaseException"}
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {ast.unparse(t).rsplit(".", 1)[-1] for t in types}


def _guards_a_body_read(handler: ast.ExceptHandler) -> bool:
    """Whether the handler catches what `response.json()[key]` raises on a body it cannot read:
    ValueError (not JSON) and KeyError (no such field), or anything."""
    caught = _caught(handler)
    if caught & {"Exception", "BaseException"}:
        return True
    return "ValueError" in caught and bool(caught & {"KeyError", "LookupError"})


def unguarded_body_reads(source: str) -> list[Finding]:
    """`<response>.json()[...]` outside a `try` whose handlers catch an unreadable body."""
    found: list[Finding] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Try):
            inner = guarded or any(_guards_a_body_read(h) for h in node.handlers)
            for statement in node.body:
                visit(statement, inner)
            for other in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(other, guarded)
            return
        if (
            not guarded
            and isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr == "json"
        ):
            found.append(
                Finding(
                    node.lineno,
                    f"`{ast.unparse(node)}` unguarded: a 2xx whose body is not the answer may have"
                    " landed; raise the example's transient error from it",
                )
            )
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(ast.parse(source), False)
    return sorted(found, key=lambda f: f.line)


def promises_without_a_timeout(source: str) -> list[Finding]:
    """`<ctx>.promise(...)` calls that leave the timeout to the SDK's default of a day."""
    return sorted(
        (
            Finding(node.lineno, f"`{ast.unparse(node)}` without timeout=: a day, by default")
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "promise"
            and "timeout" not in {k.arg for k in node.keywords}
        ),
        key=lambda f: f.line,
    )


def breaches(
    example: catalog.Example,
    check: Callable[[str], list[Finding]],
    *,
    skip: frozenset[str] = frozenset(),
) -> dict[Path, list[Finding]]:
    """The example's runtime modules (but those named in `skip`) in which `check` finds
    something, with what it found."""
    return {
        path: findings
        for path in sorted((example.path / example.package).rglob("*.py"))
        if path.name not in skip and (findings := check(path.read_text()))
    }


def report(check: str, findings: dict[Path, list[Finding]]) -> str:
    lines = [
        f"{path.relative_to(ROOT)}:{finding.line}: {finding.why}"
        for path, found in findings.items()
        for finding in found
    ]
    return f"example runtime code breaks a rule ({check}):\n" + "\n".join(lines)


@pytest.mark.parametrize("example", catalog.examples(ROOT), ids=lambda e: e.name)
def test_runtime_code_never_parses_sdk_generated_ids(example: catalog.Example) -> None:
    if found := breaches(example, sdk_id_parsing):
        pytest.fail(report(SEE_ALSO, found), pytrace=False)


@pytest.mark.parametrize("example", catalog.examples(ROOT), ids=lambda e: e.name)
def test_runtime_code_has_no_type_ignore(example: catalog.Example) -> None:
    if found := breaches(example, type_ignores):
        pytest.fail(report("code a user copies is typed", found), pytrace=False)


@pytest.mark.parametrize("example", catalog.examples(ROOT), ids=lambda e: e.name)
def test_every_registered_function_names_its_retry_policy(example: catalog.Example) -> None:
    if found := breaches(example, registrations_without_a_retry_policy):
        pytest.fail(report("a retry policy is chosen on purpose", found), pytrace=False)


@pytest.mark.parametrize("example", catalog.examples(ROOT), ids=lambda e: e.name)
def test_runtime_code_reads_its_environment_when_it_runs(example: catalog.Example) -> None:
    if found := breaches(example, environment_read_at_import):
        pytest.fail(report("read configuration when it is used", found), pytrace=False)


@pytest.mark.parametrize("example", catalog.examples(ROOT), ids=lambda e: e.name)
def test_runtime_code_never_reads_a_providers_answer_unguarded(example: catalog.Example) -> None:
    if found := breaches(example, unguarded_body_reads, skip=frozenset({"demo.py"})):
        pytest.fail(report("an unreadable answer may have landed", found), pytrace=False)


@pytest.mark.parametrize("example", catalog.examples(ROOT), ids=lambda e: e.name)
def test_every_latent_promise_names_its_timeout(example: catalog.Example) -> None:
    if found := breaches(example, promises_without_a_timeout):
        pytest.fail(report("every wait fits in its execution's deadline", found), pytrace=False)


EMAIL_ADDRESS = re.compile(r"[^\s@\"'<>]+@[^\s@\"'<>]+\.[A-Za-z]{2,}")


def email_addresses(value: object) -> list[str]:
    """Every email address in a scenario's values (arguments, signals), however deep."""
    if isinstance(value, str):
        return EMAIL_ADDRESS.findall(value)
    if isinstance(value, dict):
        return [found for item in value.items() for found in email_addresses(list(item))]
    if isinstance(value, list | tuple):
        return [found for item in value for found in email_addresses(item)]
    return []


@pytest.mark.parametrize(
    "example", [e for e in catalog.examples(ROOT) if not e.encryptor], ids=lambda e: e.name
)
def test_no_scenario_sends_the_server_an_email_address(example: catalog.Example) -> None:
    found = {
        scenario.name: sent
        for scenario in example.scenarios
        if (sent := email_addresses([scenario.args, scenario.signals]))
    }
    assert found == {}, (
        f"{example.name}: scenarios store these in the server in plaintext; pass a reference"
        " the receiving system resolves (see food-delivery), or seal them (see encryption)"
    )


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (["ada@example.com", "text"], ["ada@example.com"]),
        ([{"buyer": {"name": "Ada", "email": "ada@example.org"}}], ["ada@example.org"]),
        ([[{"to": "Ada <ada.l@mail.example.co>"}]], ["ada.l@mail.example.co"]),
        (["cus_7c41e9a2", {"poll": "poll://any@saga", "note": "a @ b"}, 42, None], []),
    ],
)
def test_the_email_address_check(value: object, found: list[str]) -> None:
    assert email_addresses(value) == found


@pytest.mark.parametrize(
    "snippet",
    [
        'receipt: str = response.json()["id"]',
        'try:\n    receipt = response.json()["id"]\nexcept ValueError:\n    raise Unavailable()',
        'try:\n    r = response.json()["id"]\nexcept httpx.TransportError:\n    raise',
        'try:\n    pass\nexcept (ValueError, KeyError):\n    reason = response.json()["error"]',
        "return Delivery(receipt=response.json()['id'])",
    ],
)
def test_the_body_read_check_catches(snippet: str) -> None:
    assert unguarded_body_reads(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        'try:\n    receipt = response.json()["id"]\nexcept (ValueError, LookupError, TypeError):\n'
        "    raise Unavailable()",
        'try:\n    reason = str(response.json()["error"])\nexcept (ValueError, KeyError):\n'
        "    reason = response.reason_phrase",
        'try:\n    x = r.json()["id"]\nexcept Exception:\n    raise',
        "body = response.json()",
        'value = mapping["json"]',
    ],
)
def test_the_body_read_check_leaves_alone(snippet: str) -> None:
    assert not unguarded_body_reads(snippet)


@pytest.mark.parametrize("snippet", ["wait = ctx.promise()", "decision = log.ctx.promise(tags=t)"])
def test_the_promise_timeout_check_catches(snippet: str) -> None:
    assert promises_without_a_timeout(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "wait = ctx.promise(timeout=ORDER_DEADLINE)",
        "record = await resonate.promises.get(promise_id)",
    ],
)
def test_the_promise_timeout_check_leaves_alone(snippet: str) -> None:
    assert not promises_without_a_timeout(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        'WORK_SECONDS = float(os.environ.get("JOB_WORK_SECONDS", "1"))',
        'URL = os.getenv("RESONATE_URL")',
        'from os import environ\nURL = environ["RESONATE_URL"]',
        'class Settings:\n    url = os.environ["RESONATE_URL"]',
        'def f(url=os.environ["RESONATE_URL"]): ...',
        'if DEBUG:\n    LEVEL = os.environ["LEVEL"]',
    ],
)
def test_the_import_time_environment_check_catches(snippet: str) -> None:
    assert environment_read_at_import(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        'def url() -> str:\n    return os.environ["RESONATE_URL"]',
        "def open_stores(environ: Mapping[str, str] = os.environ) -> Stores: ...",
        'async def main() -> None:\n    url = os.getenv("RESONATE_URL")',
        'if __name__ == "__main__":\n    main(os.environ)',
        "read = lambda: os.environ['X']",
    ],
)
def test_the_import_time_environment_check_leaves_alone(snippet: str) -> None:
    assert not environment_read_at_import(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "resonate.register(book_trip)",
        "app.resonate.register(book_trip, name='book')",
        "@resonate.register\ndef f(ctx): ...",
        "@resonate.register(name='f')\ndef f(ctx): ...",
    ],
)
def test_the_retry_policy_check_catches(snippet: str) -> None:
    assert registrations_without_a_retry_policy(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "resonate.register(book_trip, retry_policy=Never())",
        "@resonate.register(retry_policy=WORKFLOW_RETRIES)\ndef f(ctx): ...",
        "registry.add(book_trip)",
    ],
)
def test_the_retry_policy_check_leaves_alone(snippet: str) -> None:
    assert not registrations_without_a_retry_policy(snippet)


# -- the checks catch what they are for (mutants), and only that --------------------------------

PARSES_IDS = [
    'position = int(promise.id.rpartition(":")[2])',
    'parent, _, step = promise_id.partition(":")',
    'step = int(record.id.rsplit(":", 1)[1])',
    'origin = promise_id.split(":")[0]',
    'origin = promise_id.split(sep=":")[0]',
    'cut = promise_id.rfind(":")',
    'step = int(re.split(r"[:.]", promise_id)[-1])',
    'STEP = re.compile(r"^(?P<parent>.+):(?P<n>\\d+)$")',
    'login = await resonate.promises.get(f"{session_id}:1")',
    'child = f"{execution_id}:{n}"',
    'first = execution_id + ":1"',
    'child = ":".join([execution_id, str(n)])',
    'child = "{}:{}".format(execution_id, n)',
    'child = "%s:%d" % (execution_id, n)',
]
KEEPS_TO_ITS_OWN_IDS = [
    'print(f"gateway listening on http://{host}:{port}")',
    'where = f"{server.effective_host}:{server.effective_port}"',
    'print(f"{channel}: sending to {to}")',
    'raise HTTPException(409, f"order {order_id!r} is {state}: it is final")',
    'DRAIN_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"',
    "ok = re.fullmatch(DRAIN_ID, drain_id)",
    'TEXT = re.compile(r"^[^\\p{C}\\s](?:[^\\p{C}]*[^\\p{C}\\s])?$")',
    'nodes = line.split(",")',
    'headers = {"Idempotency-Key": ctx.info.id}',
    'label = "step:"',
    'print(f"✓ {status}:")',
    # An execution's keys as a prefix, to scope the provider sandbox in a demo: left alone.
    'scope = execution_id + ":"',
]


@pytest.mark.parametrize("snippet", PARSES_IDS)
def test_the_id_check_catches(snippet: str) -> None:
    findings = sdk_id_parsing(f"import re\n\n{snippet}\n")
    assert [f.line for f in findings] == [3], findings
    assert findings[0].why.startswith(WHY_IDS)


@pytest.mark.parametrize("snippet", KEEPS_TO_ITS_OWN_IDS)
def test_the_id_check_leaves_alone(snippet: str) -> None:
    assert sdk_id_parsing(f"import re\n\n{snippet}\n") == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import waitress  # type: ignore[import-untyped]",
        "RETRY = Exponential(delay=0.1)  # type: ignore[arg-type]",
        "x = f()  # type:ignore",
        "x = f()  # why  # type: ignore[no-untyped-call]",
    ],
)
def test_the_type_ignore_check_catches(snippet: str) -> None:
    assert [f.line for f in type_ignores(f"import os\n{snippet}\n")] == [2]


@pytest.mark.parametrize(
    "snippet",
    [
        "# (The client's loaders are not annotated: hence the type: ignores.)",
        'HINT = "# type: ignore"',
    ],
)
def test_the_type_ignore_check_leaves_alone(snippet: str) -> None:
    assert type_ignores(f"{snippet}\n") == []


@pytest.mark.parametrize(
    "snippet", ["from cookbook.sandbox import SandboxRecords", "import cookbook.catalog"]
)
def test_the_cookbook_import_check_catches(
    snippet: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "examples" / "bad-example" / "bad_example"
    package.mkdir(parents=True)
    (package / "worker.py").write_text(f"from resonate.resonate import Resonate\n{snippet}\n")
    monkeypatch.setattr(test_examples, "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"bad_example/worker\.py:2 imports cookbook"):
        test_examples.test_runtime_code_uses_only_the_public_sdk_api(package.parent)
