"""Random-timing chaos: many executions through an entry point, processes killed at random.

The crash harness arms one fault at a chosen checkpoint of one execution; real outages do not
wait for one. A chaos run starts N executions at once through the example's real entry point (its
gateway over HTTP, or its Kafka topic), and while they run SIGKILLs workers, the dev server and
the example's other long-running processes at seeded random times, each replaced by a fresh
process. Then every execution must end with the outcome its plan expects, and the receiving
systems' own records must show every effect exactly once: the provider sandbox's effects,
attributed to executions by their idempotency keys, and whatever the example's driver reads from
its own stores.

The seed fixes the plans, the start times and the kill schedule (when, whom, for how long), so a
failure is replayed with `--seed`; how the processes interleave in between is the machine's.

An example opts in with `[tool.cookbook.chaos]`: `driver`, a Python file beside its tests that
defines `DRIVER`, an instance of a `Driver` subclass (how to start execution i, what it must end
as, and how to check the example's own records), and default sizes (`executions`, `kills`,
`seconds`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord

from cookbook import catalog, clients
from cookbook.crash import receivers
from cookbook.processes import ManagedProcess
from cookbook.stack import Stack, gateway_process, stack_for, url_of, worker_process

# A killed worker's leases are released as soon as its connection drops (the dev server's fast
# recovery mode, as in the crash harness), and this lease ttl bounds the rest: a worker that is
# gone without its connection dropping (a dev server killed and restarted) loses its tasks after
# at most this long.
WORKER_TTL_SECONDS = "5"
WORKERS = 2
# How long executions may take to settle after the last kill, before they count as lost.
SETTLE_SECONDS = 60.0
# What an entry point's answer may be while a process it needs is being restarted: asked again.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Execution:
    """What a driver plans for execution i: its id, what it must end as, what it must effect."""

    id: str  # chosen by the driver; the sandbox's idempotency keys start with `<id>:`
    kind: str  # the plan's name, shown in the execution's line
    expected: str  # the outcome the driver's `outcome` must report in the end
    # Sandbox effects ("provider.action") the execution must leave, each exactly this often.
    effects: Mapping[str, int] = field(default_factory=dict)
    # Anything else the driver wants to remember about its plan.
    details: Mapping[str, Any] = field(default_factory=dict)


class Entry:
    """The running example as a driver sees it: its entry point and the stack around it."""

    def __init__(self, stack: Stack, http: httpx.AsyncClient, worker_dir: Path) -> None:
        self.stack = stack
        self.http = http  # base URL: the gateway, if the example has one
        self.worker_dir = worker_dir
        # What a driver learns while it drives (a token a login answered, say), by execution id.
        self.learned: dict[str, dict[str, Any]] = {}
        self._observer: Resonate | None = None

    async def execution(self, execution_id: str) -> PromiseRecord | None:
        """The execution's root promise as the Resonate server holds it (None: not there yet),
        for an outcome the entry point cannot show (a session whose login answer was lost)."""
        if self._observer is None:
            # A client in a group of its own: the server never hands it work.
            self._observer = Resonate(
                url=self.stack.resonate_url,
                group="chaos-observer",
                token=self.stack.token,
                autostart=False,
            )
            self._observer.start()
        try:
            return await self._observer.promises.get(execution_id)
        except ServerError as exc:
            if exc.code != 404:
                raise
            return None

    async def close(self) -> None:
        if self._observer is not None:
            await self._observer.stop()

    async def call(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        give_up_after: float = 120.0,
    ) -> httpx.Response:
        """The entry point's first answer that is not transient (a 5xx, 408, 429, no answer).

        A process the call needs may be being killed and restarted: the call is sent again,
        as a client would, until it is answered or `give_up_after` seconds pass.
        """
        deadline = time.monotonic() + give_up_after
        while True:
            try:
                response = await self.http.request(method, url, json=json, headers=headers)
                if response.status_code not in TRANSIENT_STATUSES:
                    return response
                problem = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                problem = repr(exc)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{method} {url}: no answer in {give_up_after}s (last: {problem})"
                )
            await asyncio.sleep(0.2)


class Driver:
    """How a chaos run drives one example; subclassed in the example's tests (`DRIVER = ...`)."""

    # Long-running modules of the example besides its workers and gateway (a Kafka consumer),
    # started with the stack's environment; each must print a line with `ready`. They are
    # killed and restarted like the workers.
    processes: Sequence[str] = ()
    # Extra environment for every process of the example.
    env: Mapping[str, str] = {}

    def plan(self, i: int, rng: random.Random) -> Execution:
        raise NotImplementedError

    async def prepare(self, entry: Entry, plans: Sequence[Execution]) -> None:
        """Before anything starts: arm the sandbox faults the plans need, seed stores."""

    async def drive(self, entry: Entry, plan: Execution) -> None:
        """Start the execution through the entry point, and send it what its plan says."""
        raise NotImplementedError

    async def outcome(self, entry: Entry, plan: Execution) -> str | None:
        """What the execution ended as, read from the entry point; None while it runs."""
        raise NotImplementedError

    def effects(self, entry: Entry, plan: Execution) -> Mapping[str, int]:
        """The sandbox effects the execution must have left, once it settled: its plan's, unless
        what it must leave depends on how the run went (what the driver learned)."""
        return plan.effects

    async def check(
        self, entry: Entry, plans: Sequence[Execution], recorded: receivers.Recorded
    ) -> list[str]:
        """Problems in the example's own records (its stores, its ledger): one line each.

        `recorded` holds every record each declared receiving system made during the run.
        """
        return []


@dataclass(frozen=True)
class Kill:
    at: float  # seconds after the first execution may start
    victim: str  # "server", "worker", or one of the driver's processes
    down: float  # seconds before a fresh process is started


def schedule(rng: random.Random, kills: int, seconds: float, victims: Sequence[str]) -> list[Kill]:
    """When, whom, and for how long: the server at least once (when there are kills at all)."""
    chosen = ["server"] if kills else []
    chosen += [rng.choice(victims) for _ in range(kills - 1)]
    rng.shuffle(chosen)
    times = sorted(rng.uniform(0.1 * seconds, seconds) for _ in range(kills))
    return [
        Kill(round(at, 2), victim, round(rng.uniform(0.05, 0.5), 2))
        for at, victim in zip(times, chosen, strict=True)
    ]


@dataclass
class Verdict:
    execution: Execution
    outcome: str | None
    problems: list[str]
    effects: int = 0  # how many sandbox effects it had to leave, each exactly once

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class Report:
    seed: int
    verdicts: list[Verdict]
    problems: list[str]  # not one execution's: records nobody owns, the example's own stores
    kills: list[str]
    seconds: float

    @property
    def failed(self) -> int:
        return sum(not v.passed for v in self.verdicts) + len(self.problems)

    @property
    def passed(self) -> int:
        return sum(v.passed for v in self.verdicts)


def judge(
    plans: Sequence[Execution],
    outcomes: Mapping[str, str | None],
    recorded: receivers.Recorded,
    expected_effects: Mapping[str, Mapping[str, int]] | None = None,
) -> tuple[list[Verdict], list[str]]:
    """Each execution's verdict (its outcome, its sandbox effects), and the unowned effects.

    `expected_effects` (by execution id) overrides the plans' effects."""
    effects: dict[str, Counter[str]] = {plan.id: Counter() for plan in plans}
    unowned: list[str] = []
    for effect in recorded.get(receivers.SANDBOX.name, []):
        key = effect.get("idempotency_key")
        what = f"{effect.get('provider')}.{effect.get('action')}"
        owner = key.split(":", 1)[0] if isinstance(key, str) else None
        if owner in effects:
            effects[owner][what] += 1
        else:
            unowned.append(f"sandbox effect {what} with key {key!r} belongs to no execution")
    verdicts = []
    for plan in plans:
        problems = []
        got = outcomes.get(plan.id)
        if got is None:
            problems.append(f"did not finish: expected {plan.expected}")
        elif got != plan.expected:
            problems.append(f"ended {got}: expected {plan.expected}")
        wanted = (expected_effects or {}).get(plan.id, plan.effects)
        expected = Counter({what: n for what, n in wanted.items() if n})
        for what in sorted(expected.keys() | effects[plan.id].keys()):
            if (n := effects[plan.id][what]) != expected[what]:
                problems.append(f"sandbox recorded {what} {n}x: expected {expected[what]}x")
        verdicts.append(Verdict(plan, got, problems, expected.total()))
    return verdicts, unowned


def load_driver(example: catalog.Example) -> Driver:
    if example.chaos is None:
        raise catalog.CatalogError(
            f"{example.name} has no [tool.cookbook.chaos] table: no chaos driver"
        )
    path = example.chaos.driver
    name = f"cookbook_chaos_driver_{example.package}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise catalog.CatalogError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    driver = getattr(module, "DRIVER", None)
    if not isinstance(driver, Driver):
        raise catalog.CatalogError(f"{path}: DRIVER must be an instance of cookbook.chaos.Driver")
    return driver


class _Processes:
    """The example's processes, by role; a killed one is replaced by a fresh process."""

    def __init__(self, example: catalog.Example, driver: Driver, stack: Stack, workdir: Path):
        self.example, self.driver, self.stack, self.workdir = example, driver, stack, workdir
        self.running: dict[str, ManagedProcess] = {}
        self.started = 0

    def _env(self) -> dict[str, str]:
        # The workers' directory is their TMPDIR too: an example keeping files there (a store)
        # keeps them where the receivers look, shared by every process of this run only.
        return self.stack.env(
            RESONATE_TTL_SECONDS=WORKER_TTL_SECONDS, TMPDIR=str(self.workdir), **self.driver.env
        )

    def new(self, role: str) -> ManagedProcess:
        self.started += 1
        if role.startswith("worker"):
            process = worker_process(
                self.example.worker, self._env(), name=f"{role}#{self.started}", cwd=self.workdir
            )
        else:
            process = ManagedProcess(
                f"{role}#{self.started}",
                [sys.executable, "-m", role],
                ready="ready",
                env=self._env(),
                cwd=self.workdir,
            )
        return process.start(timeout=60)

    async def start_all(self) -> None:
        # At once: each spends its start importing, which a loaded machine makes seconds.
        roles = [f"worker-{n}" for n in range(1, WORKERS + 1)] + list(self.driver.processes)
        started = await asyncio.gather(
            *(asyncio.to_thread(self.new, role) for role in roles), return_exceptions=True
        )
        for role, process in zip(roles, started, strict=True):
            if isinstance(process, ManagedProcess):
                self.running[role] = process
        for failure in started:
            if isinstance(failure, BaseException):
                raise failure

    def stop_all(self, *others: ManagedProcess | None) -> None:
        """Stop them all at once (each by its pid): one by one, each graceful stop adds up."""
        every = [p for p in (*others, *self.running.values()) if p is not None]
        threads = [threading.Thread(target=p.stop) for p in every]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


async def _kill(kill: Kill, processes: _Processes, rng: random.Random, say: Say) -> str:
    stack = processes.stack
    if kill.victim == "server":
        assert stack.devserver is not None
        old = stack.devserver.pid
        stack.devserver.kill()
        await asyncio.sleep(kill.down)
        await asyncio.to_thread(stack.restart_devserver)
        line = f"t={kill.at:.2f}s SIGKILL dev server (pid {old}), restarted {kill.down}s later"
    else:
        role = kill.victim
        if role == "worker":
            role = rng.choice(sorted(r for r in processes.running if r.startswith("worker-")))
        victim = processes.running[role]
        victim.kill()
        await asyncio.sleep(kill.down)
        processes.running[role] = await asyncio.to_thread(processes.new, role)
        line = (
            f"t={kill.at:.2f}s SIGKILL {role} (pid {victim.pid}), "
            f"a fresh one (pid {processes.running[role].pid}) after {kill.down}s"
        )
    say(f"  {line}")
    return line


type Say = Callable[[str], None]


async def _within(awaitable: Awaitable[None], seconds: float) -> str | None:
    try:
        await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        return f"still driving after {seconds:.0f}s"
    except Exception as exc:
        return f"driving it failed: {exc!r}"
    return None


async def _chaos(
    example: catalog.Example,
    driver: Driver,
    *,
    seed: int,
    executions: int,
    kills: int,
    seconds: float,
    say: Say,
    settle_seconds: float,
) -> Report:
    rng = random.Random(seed)
    plans = [driver.plan(i, random.Random(f"{seed}/{i}")) for i in range(executions)]
    starts = [rng.uniform(0, 0.6 * seconds) for _ in plans]
    victims = ["server", "worker", *driver.processes]
    kill_plan = schedule(rng, kills, seconds, victims)
    victim_rng = random.Random(f"{seed}/victims")
    began = time.monotonic()
    with stack_for(
        example.services,
        fast_recovery=True,
        auth=example.auth,
        model_script=example.model_script,
    ) as stack:
        workdir = stack.workdir / "workers"
        workdir.mkdir()
        processes = _Processes(example, driver, stack, workdir)
        gateway: ManagedProcess | None = None
        starting: asyncio.Task[None] | None = None
        try:
            starting = asyncio.create_task(processes.start_all())
            if example.gateway:
                env = processes._env()
                gateway = gateway_process(str(example.gateway), env)
                await asyncio.to_thread(gateway.start, 60)
            await starting
            base_url = url_of(gateway) if gateway else ""
            place = receivers.Place(stack.service_url, workdir, stack.sandbox is not None)
            active = receivers.active(receivers.declared_by(example.path, example.name), place)
            marks = await receivers.watermarks(active, place)
            async with clients.async_client(base_url=base_url, timeout=30) as http:
                entry = Entry(stack, http, workdir)
                try:
                    await driver.prepare(entry, plans)
                    started = time.monotonic()

                    async def drive(plan: Execution, delay: float) -> str | None:
                        await asyncio.sleep(delay)
                        return await _within(driver.drive(entry, plan), settle_seconds + seconds)

                    async def chaos() -> list[str]:
                        lines = []
                        for kill in kill_plan:
                            await asyncio.sleep(max(0.0, started + kill.at - time.monotonic()))
                            lines.append(await _kill(kill, processes, victim_rng, say))
                        return lines

                    killing = asyncio.create_task(chaos())
                    driven = await asyncio.gather(
                        *(drive(p, d) for p, d in zip(plans, starts, strict=True))
                    )
                    kill_lines = await killing
                    say(f"  t={time.monotonic() - started:.2f}s every execution driven")
                    outcomes = await settle(entry, driver, plans, settle_seconds)
                    say(f"  t={time.monotonic() - started:.2f}s every execution settled")
                    recorded = await receivers.recorded_since(active, place, marks)
                    wanted = {plan.id: driver.effects(entry, plan) for plan in plans}
                    verdicts, problems = judge(plans, outcomes, recorded, wanted)
                    for verdict, drive_problem in zip(verdicts, driven, strict=True):
                        if drive_problem:
                            verdict.problems.insert(0, drive_problem)
                    problems += await driver.check(entry, plans, recorded)
                finally:
                    await entry.close()
        finally:
            if starting is not None and not starting.done():
                await asyncio.gather(starting, return_exceptions=True)
            processes.stop_all(gateway)
    return Report(seed, verdicts, problems, kill_lines, time.monotonic() - began)


async def settle(
    entry: Entry, driver: Driver, plans: Sequence[Execution], settle_seconds: float
) -> dict[str, str | None]:
    """Every execution's outcome, waiting (up to `settle_seconds`) for those still running."""
    outcomes: dict[str, str | None] = {plan.id: None for plan in plans}
    deadline = time.monotonic() + settle_seconds

    async def read(plan: Execution) -> None:
        try:
            outcomes[plan.id] = await driver.outcome(entry, plan)
        except (httpx.HTTPError, OSError):
            outcomes[plan.id] = None  # a process it needs is still coming back: ask again

    while True:
        await asyncio.gather(*(read(p) for p in plans if outcomes[p.id] is None))
        if all(outcomes.values()) or time.monotonic() > deadline:
            return outcomes
        await asyncio.sleep(0.25)


def run(
    example: catalog.Example,
    *,
    seed: int | None = None,
    executions: int | None = None,
    kills: int | None = None,
    seconds: float | None = None,
    say: Say = print,
    driver: Driver | None = None,
    settle_seconds: float = SETTLE_SECONDS,
) -> Report:
    """One chaos run, narrated through `say`: the seed first, a line per kill, per execution and
    per problem, then `N passed, M failed`."""
    driver = driver or load_driver(example)
    assert example.chaos is not None
    seed = random.SystemRandom().randrange(1, 10**6) if seed is None else seed
    executions = executions or example.chaos.executions
    kills = example.chaos.kills if kills is None else kills
    seconds = seconds or example.chaos.seconds
    sizes = [
        f"--{name} {value:g}"
        for name, value, default in (
            ("executions", executions, example.chaos.executions),
            ("kills", kills, example.chaos.kills),
            ("seconds", seconds, example.chaos.seconds),
        )
        if value != default
    ]
    replay = " ".join([f"cookbook chaos {example.name} --seed {seed}", *sizes])
    say(
        f"chaos {example.name}: seed {seed} ({executions} executions, {kills} kills over "
        f"{seconds:g}s; replay with `{replay}`)"
    )
    report = asyncio.run(
        _chaos(
            example,
            driver,
            seed=seed,
            executions=executions,
            kills=kills,
            seconds=seconds,
            say=say,
            settle_seconds=settle_seconds,
        )
    )
    for verdict in report.verdicts:
        plan = verdict.execution
        mark = "ok  " if verdict.passed else "FAIL"
        n = verdict.effects
        effects = f"; {n} sandbox effect{'s' * (n != 1)}, each once" if verdict.passed and n else ""
        say(f"  {mark} {plan.id} ({plan.kind}): {verdict.outcome or 'no outcome'}{effects}")
        for problem in verdict.problems:
            say(f"       {problem}")
    for problem in report.problems:
        say(f"  FAIL {problem}")
    say(f"seed {seed}; run took {report.seconds:.1f}s")
    say(f"{report.passed} passed, {report.failed} failed")
    return report
