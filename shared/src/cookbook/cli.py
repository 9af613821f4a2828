"""`cookbook`: the Makefile's command line (run, crash, chaos, pin, bench, tree, docs, site...)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cookbook import bench, catalog, clients, copyout, diagram, docs, scaffold
from cookbook.crash import pins
from cookbook.crash.harness import CrashHarness, CrashResult, Golden, harness_stack
from cookbook.processes import ManagedProcess, stopping
from cookbook.stack import Stack, gateway_process, stack_for, url_of, worker_process

# Short enough that the crash demo takes over quickly, long enough for every step of a demo.
DEMO_TTL_SECONDS = "5"


_output = threading.Lock()


def _say(line: str) -> None:
    # Workers, the sandbox and the take-over thread all narrate at once; keep lines whole.
    with _output:
        print(line, flush=True)


def run_example(
    name: str,
    crash: str | None = None,
    also: Sequence[str] = (),
    client: str | None = None,
    skip_time: bool = False,
    copy_out: bool = False,
) -> int:
    """Start what an example needs, run its narrated demo, stop everything.

    With `crash`, the worker is SIGKILLed right after that provider acted for it (before the step
    could checkpoint), and a fresh worker takes over: the output shows what it replayed. `also`
    starts more long-running modules of the example (each prints a line with `ready`), and
    `client` ("module args...") runs instead of the demo, e.g. a benchmark. `skip_time` starts
    the embedded dev server with time skipping (durable sleeps and timeouts fire as soon as every
    execution is suspended). `copy_out` runs the example's processes from a copy of its folder
    alone, installed into a venv of its own (cookbook.copyout), as a user who copied it would.
    """
    example = catalog.example(name)
    if example.demo is None and client is None:
        sys.exit(f"cookbook: {name} has no demo")
    if crash and "sandbox" not in example.services:
        sys.exit(f"cookbook: {name} calls no provider, so CRASH= has nothing to crash after")
    started = time.perf_counter()
    # A benchmark client wants the machine to itself, not a line of narration per call.
    quiet = client is not None
    with contextlib.ExitStack() as cleanup:
        python, cwd, environ = sys.executable, None, None
        if copy_out:
            outside = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="copy-out-")))
            python, cwd = str(copyout.copy_out(example, outside)), outside / example.name
            environ = copyout.environment()
            _say(f"· copied out: {cwd} (its own venv: {python})")
        return _run_stack(
            example, crash, also, client, skip_time, quiet, started, python, cwd, environ
        )


def copy_out_example(name: str, to: str | None = None) -> int:
    """Copy an example's folder alone out of the cookbook, install it into a venv of its own, and
    run the tests it carries there (`make copy-out-<example>`): what a user who copies it gets."""
    example = catalog.example(name)
    with contextlib.ExitStack() as cleanup:
        if to is None:
            outside = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="copy-out-")))
        else:
            outside = Path(to).resolve()
            outside.mkdir(parents=True, exist_ok=True)
        _say(f"· copying {name}'s folder alone to {outside / name}")
        python = copyout.copy_out(example, outside)
        _say(f"· installed from its pyproject.toml (and its dev group) into {python.parent.parent}")
        _say(f"· running the tests it carries: cd {outside / name} && {python} -m pytest tests")
        done = copyout.run_tests(outside / name, python)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        if to is None:
            _say("· the copy is removed (keep it with --to DIR)")
        return done.returncode


def _run_stack(
    example: catalog.Example,
    crash: str | None,
    also: Sequence[str],
    client: str | None,
    skip_time: bool,
    quiet: bool,
    started: float,
    python: str,
    cwd: Path | None,
    environ: Mapping[str, str] | None,
) -> int:
    with stack_for(
        example.services,
        environ=environ,
        narrate=None if quiet else _prefixed("provider"),
        skip_time=skip_time,
        auth=example.auth,
        model_script=example.model_script,
    ) as stack:
        where = "embedded dev server" if stack.embedded else "RESONATE_URL"
        if stack.token:  # never shown: the example's processes get it as RESONATE_TOKEN
            where += ", bearer token required: in RESONATE_TOKEN"
        if skip_time:
            where += ", time skipping" if stack.embedded else "; --skip-time ignored: not embedded"
        _say(f"· resonate server: {stack.resonate_url} ({where})")
        if stack.provider_url:
            _say(f"· provider sandbox: {stack.provider_url}")
        if stack.model:
            _say(f"· model: {_model_line(stack)}")
        if stack.kafka_bootstrap:
            _say(f"· kafka broker: {stack.kafka_bootstrap}")

        def worker(n: int) -> ManagedProcess:
            return worker_process(
                example.worker,
                stack.env(RESONATE_TTL_SECONDS=DEMO_TTL_SECONDS),
                name=f"worker-{n}",
                on_line=None if quiet else _prefixed(f"worker-{n}"),
                cwd=cwd,
                python=python,
            )

        killed = threading.Event()
        with stopping([worker(1).start()]) as workers:
            _say(f"· worker-1 (pid {workers[0].pid}) is listening on group '{example.group}'")
            if crash:
                _arm_crash(stack, crash, workers, worker, killed)
            demo_env = stack.env()
            if example.gateway:
                gateway = gateway_process(
                    example.gateway,
                    stack.env(),
                    on_line=_prefixed("gateway"),
                    cwd=cwd,
                    python=python,
                )
                workers.append(gateway.start())
                demo_env["GATEWAY_URL"] = url_of(gateway)
                _say(f"· gateway: {demo_env['GATEWAY_URL']} (pid {gateway.pid})")
            for module in also:
                argv = [python, "-m", module]
                extra = ManagedProcess(
                    module,
                    argv,
                    ready="ready",
                    env=stack.env(),
                    on_line=None if quiet else _prefixed(module),
                    cwd=cwd,
                )
                workers.append(extra.start())
            command = shlex.split(client) if client else [str(example.demo)]
            demo = subprocess.run([python, "-m", *command], env=demo_env, cwd=cwd, check=False)
    _say(f"· done in {time.perf_counter() - started:.1f}s; every process stopped")
    if crash and not killed.is_set():
        _say(f"cookbook: CRASH={crash} never fired: the demo applied no such effect")
        return demo.returncode or 1
    return demo.returncode


CRASH_SPEC = re.compile(r"^(?P<provider>[a-z]+)(\.(?P<action>[a-z]+))?(#(?P<nth>[1-9][0-9]*))?$")


def _prefixed(name: str) -> Callable[[str], None]:
    return lambda line: _say(f"  {name} | {line}")


def _model_line(stack: Stack) -> str:
    base_url = stack.env()["OPENAI_BASE_URL"]
    if base_url != stack.service_url("model"):
        return f"{base_url} (OPENAI_BASE_URL from the environment)"
    script = stack.model_script.name if stack.model_script else "no script: default replies"
    return f"the stand-in model at {base_url} ({script})"


def _arm_crash(
    stack: Stack,
    spec: str,
    workers: list[ManagedProcess],
    new_worker: Callable[[int], ManagedProcess],
    killed: threading.Event,
) -> None:
    """CRASH=<provider>[.<action>][#n]: kill worker-1 right after the nth such effect."""
    match = CRASH_SPEC.match(spec)
    if match is None:
        sys.exit(
            f"cookbook: CRASH={spec!r}: expected <provider>[.<action>][#n], e.g. hotel or api#3"
        )
    switch = {
        "provider": match["provider"],
        "action": match["action"],
        "nth": int(match["nth"] or 1),
        "pid": workers[0].pid,
    }
    response = clients.post(f"{stack.provider_url}/_admin/kill-switches", json=switch)
    if response.status_code != 201:
        sys.exit(f"cookbook: cannot arm CRASH={spec}: {response.text}")
    victim = workers[0]
    _say(f"· CRASH={spec}: worker-1 will be SIGKILLed right after that effect is applied")

    def take_over() -> None:
        if victim.wait(timeout=3600) != -signal.SIGKILL:
            return  # stopped at the end of the demo: the switch never fired
        killed.set()
        _say(f"  💥 worker-1 was SIGKILLed: {spec} acted, the step's result was never checkpointed")
        workers.append(new_worker(2).start())
        _say(
            f"· worker-2 started; it takes over when worker-1's lease runs out (ttl "
            f"{DEMO_TTL_SECONDS}s), replays the workflow, and gets finished steps from the journal"
        )

    threading.Thread(target=take_over, daemon=True).start()


def crash_example(name: str, only: str | None = None) -> int:
    """Run the crash matrix of one example; one line per crash point, then `N passed, M failed`."""
    example = catalog.example(name)
    results: list[CrashResult] = []
    found: dict[str, list[str] | None] = {}
    started = time.perf_counter()
    with harness_stack(example) as stack, CrashHarness(example, stack) as harness:
        for scenario in example.scenarios:
            golden = harness.golden(scenario)
            found[scenario.name] = [p.id for p in golden.points]
            _say(
                f"{example.name}/{scenario.name}: golden run {golden.outcome.state} in "
                f"{golden.seconds:.2f}s, {len(golden.checkpoints)} checkpoints, "
                f"{len(golden.points)} crash points"
            )
            for point in golden.points:
                if only and only not in point.id:
                    continue
                result = harness.run(golden, point)
                results.append(result)
                verdict = "ok  " if result.passed else "FAIL"
                _say(
                    f"  {verdict} {example.name}[{point.id}]  recovered in "
                    f"{result.recovery_seconds:.2f}s"
                )
                for problem in result.problems:
                    _say(f"       {problem}")
    recoveries = [r.recovery_seconds for r in results if r.passed]
    if recoveries:
        _say(
            f"recovery: median {statistics.median(recoveries):.2f}s, max {max(recoveries):.2f}s;"
            f" matrix wall time {time.perf_counter() - started:.1f}s"
        )
    drift = pins.drift(example, found)
    for problem in drift:
        _say(f"FAIL {problem}")
    passed = sum(r.passed for r in results)
    _say(f"{passed} passed, {len(results) - passed} failed")
    return 0 if results and passed == len(results) and not drift else 1


def chaos_example(
    name: str, seed: int | None, executions: int | None, kills: int | None, seconds: float | None
) -> int:
    """A random-timing chaos run of one example (see cookbook.chaos); non-zero on any failure."""
    from cookbook import chaos

    report = chaos.run(
        catalog.example(name),
        seed=seed,
        executions=executions,
        kills=kills,
        seconds=seconds,
        say=_say,
    )
    return 0 if report.failed == 0 and report.verdicts else 1


def pin_examples(names: Sequence[str]) -> int:
    """Rewrite the pinned crash points of these examples (all of them if none) from golden runs."""
    chosen = [catalog.example(n) for n in names] if names else catalog.examples()
    failed = False
    for example in chosen:
        if not example.scenarios:
            continue
        with harness_stack(example) as stack, CrashHarness(example, stack) as harness:
            try:
                goldens: list[Golden] = [harness.golden(s) for s in example.scenarios]
            except Exception as exc:
                _say(f"{example.name}: a golden run failed, its pins are left as they were: {exc}")
                failed = True
                continue
        path = pins.write(example, {g.scenario.name: [p.id for p in g.points] for g in goldens})
        total = sum(len(g.points) for g in goldens)
        _say(f"{path.relative_to(catalog.repo_root())}: {total} crash points")
    if not names:
        for orphan in pins.orphans(catalog.repo_root(), chosen):
            orphan.unlink()
            _say(f"{orphan.relative_to(catalog.repo_root())}: removed (no such example)")
    return 1 if failed else 0


def sync_docs(*, check: bool, only: str | None = None, trees: bool = True) -> int:
    """Refresh (or, with `check`, compare) README snippets and example promise trees."""
    root = catalog.repo_root()
    drifted = docs.sync(root, check=check)
    for drift in drifted:
        verb = "differs from" if check else "refreshed from"
        if drift.ref == "catalog":
            _say(f"{drift.readme}: the catalog table {verb} the examples' [tool.cookbook]")
        else:
            _say(f"{drift.readme}: snippet {verb} {drift.ref}")
    problems = bool(drifted) and check
    if trees:
        for example in catalog.examples(root):
            if only is None or example.name == only:
                problems |= not _sync_trees(example, check=check)
    return 1 if problems else 0


def _sync_trees(example: catalog.Example, *, check: bool) -> bool:
    """Draw the promise trees an example README asks for from golden runs; False on a problem."""
    readme = example.path / "README.md"
    if not readme.is_file():
        _say(f"{example.path}: no README.md (every example needs one)")
        return False
    wanted = docs.tree_scenarios(readme)
    if not wanted:
        _say(f"{readme}: no promise tree (add <!-- tree: <scenario> --> under How it works)")
        return False
    scenarios = {s.name: s for s in example.scenarios}
    unknown = [name for name in wanted if name not in scenarios]
    if unknown:
        _say(f"{readme}: tree for unknown scenario(s) {', '.join(unknown)}")
        return False
    diagrams = {
        name: diagram.diagram(diagram.golden_run(example, scenarios[name])) for name in wanted
    }
    text, drifted = docs.render_trees(readme, diagrams)
    for drift in drifted:
        _say(f"{readme}: promise {drift.ref} {'differs' if check else 'redrawn'}")
    if drifted and not check:
        readme.write_text(text)
    return not (drifted and check)


def list_examples() -> int:
    for example in catalog.examples():
        scenarios = ", ".join(s.name for s in example.scenarios)
        _say(f"{example.name:<20} worker {example.worker:<24} scenarios: {scenarios}")
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cookbook", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an example's narrated demo")
    run.add_argument("example")
    run.add_argument(
        "--crash",
        metavar="PROVIDER[.ACTION][#N]",
        help="SIGKILL the worker right after the Nth such effect (e.g. hotel, api#3)",
    )
    run.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="MODULE",
        help="also run this module of the example for the duration (repeatable)",
    )
    run.add_argument("--client", metavar='"MODULE ARGS"', help="run this instead of the demo")
    run.add_argument(
        "--copy-out",
        action="store_true",
        help="run the example's processes from a copy of its folder alone, in a venv of its own",
    )
    run.add_argument(
        "--skip-time",
        action="store_true",
        help="embedded dev server only: fire durable sleeps and timeouts as soon as every "
        "execution is suspended",
    )
    copy = sub.add_parser(
        "copy-out",
        help="copy an example's folder alone into a venv of its own and run the tests it carries",
    )
    copy.add_argument("example")
    copy.add_argument("--to", metavar="DIR", help="keep the copy here (default: a temporary one)")
    crash = sub.add_parser("crash", help="run an example's crash matrix")
    crash.add_argument("example")
    crash.add_argument("-k", dest="only", help="only crash points whose id contains this")
    chaos = sub.add_parser(
        "chaos",
        help="start N executions through an example's entry point, SIGKILL its processes at "
        "seeded random times, check every outcome and every effect",
    )
    chaos.add_argument("example")
    chaos.add_argument("--seed", type=int, help="replay this seed (default: a new one)")
    chaos.add_argument("--executions", type=int, help="how many (default: the example's)")
    chaos.add_argument("--kills", type=int, help="how many SIGKILLs (default: the example's)")
    chaos.add_argument("--seconds", type=float, help="the window starts and kills spread over")
    bench.add_arguments(
        sub.add_parser("bench", help="measure step overhead, recovery and crash-matrix speed")
    )
    pin = sub.add_parser(
        "pin", help="rewrite the pinned crash points (tests/crash/points/) from golden runs"
    )
    pin.add_argument("examples", nargs="*", help="only these examples (default: all)")
    tree = sub.add_parser("tree", help="print the promise tree of an execution")
    tree.add_argument("id")
    sub.add_parser("list", help="list the examples")
    new = sub.add_parser("new", help="scaffold a new example from the template")
    new.add_argument("name")
    docs = sub.add_parser(
        "docs", help="refresh README snippets from the source files, and the promise trees"
    )
    docs.add_argument("--check", action="store_true", help="only report drift (exit 1)")
    docs.add_argument("--example", help="draw only this example's promise trees")
    docs.add_argument("--no-trees", action="store_true", help="snippets only (no runs)")
    site_parser = sub.add_parser("site", help="build the documentation site (MkDocs, strict)")
    site_parser.add_argument("--serve", action="store_true", help="serve it on :8000 instead")
    args = parser.parse_args(argv)
    # The SDK logs every reconnect; while the harness kills servers on purpose that is noise.
    logging.getLogger("resonate").setLevel(logging.ERROR)
    # A SIGTERM (a test's timeout, `timeout`, a container stop) unwinds like Ctrl-C: every
    # process this command started runs in a session of its own and is stopped on the way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        match args.command:
            case "run":
                code = run_example(
                    args.example,
                    args.crash,
                    args.also,
                    args.client,
                    args.skip_time,
                    args.copy_out,
                )
            case "copy-out":
                code = copy_out_example(args.example, args.to)
            case "crash":
                code = crash_example(args.example, args.only)
            case "chaos":
                code = chaos_example(
                    args.example, args.seed, args.executions, args.kills, args.seconds
                )
            case "pin":
                code = pin_examples(args.examples)
            case "bench":
                code = bench.command(args, say=_say)
            case "tree":
                from cookbook.tree import print_tree

                code = asyncio.run(print_tree(args.id))
            case "new":
                code = scaffold.main(args.name)
            case "docs":
                code = sync_docs(check=args.check, only=args.example, trees=not args.no_trees)
            case "site":
                from cookbook import site

                code = site.command(catalog.repo_root(), serve=args.serve, say=_say)
            case _:
                code = list_examples()
    except (catalog.CatalogError, scaffold.ScaffoldError) as exc:
        sys.exit(f"cookbook: {exc}")
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
