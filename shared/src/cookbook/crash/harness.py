"""The crash harness: a golden run, then one run per crash point with a real SIGKILL.

For each crash point it takes a worker process (the one that finished the previous run, else a
new one), arms a tripwire on the dev server, starts the scenario, waits for the kill, starts a new
worker (or restarts the server), and checks what the receiving systems recorded:
  - the execution completes with the golden outcome;
  - no step that had completed before the kill ran again (the dev server's journal: no new request
    touched a promise that was already settled);
  - every external effect was applied exactly once (the provider sandbox's own records).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, Self

import httpx
from resonate.resonate import Resonate
from resonate.types import Value

from cookbook import clients
from cookbook.catalog import Example, Scenario
from cookbook.crash import receivers
from cookbook.crash.plan import Checkpoint, CrashPoint, checkpoints, crash_points
from cookbook.crash.zygote import ForkedProcess, Zygotes
from cookbook.processes import ManagedProcess
from cookbook.stack import Stack, stack_for, worker_process

KILL_TIMEOUT = 30.0
# How long a continued worker has to send its late writes (it resumes where it stopped).
LATE_WRITES_TIMEOUT = 15.0
COMPLETE_TIMEOUT = 60.0
WORKER_TTL_SECONDS = "5"


@dataclass(frozen=True)
class Outcome:
    state: str  # resolved | rejected
    value: str  # the result, or the error type and message

    @classmethod
    async def of(cls, handle: Any) -> Outcome:
        try:
            return cls("resolved", repr(await handle.result()))
        except Exception as exc:
            return cls("rejected", f"{type(exc).__name__}: {exc}")

    def normalized(
        self,
        execution_id: str,
        effects: list[dict[str, Any]],
        step_results: dict[str, str] | None = None,
    ) -> Outcome:
        """Name each id a run minted by the step that minted it, and the execution id by `<id>`.

        Two runs book different confirmation numbers (and generate different account ids); what
        must match is that each one is the id of the single effect recorded for the same step,
        or the value the same step journaled.
        """
        value = self.value
        for effect in effects:
            step = effect["idempotency_key"].removeprefix(execution_id)
            value = value.replace(effect["resource_id"], f"<effect{step}>")
        for suffix, result in (step_results or {}).items():
            value = value.replace(result, f"<result{suffix}>")
        return Outcome(self.state, value.replace(execution_id, "<id>"))


type EffectKey = tuple[str, str, str]  # (key relative to the execution id, provider, action)


@dataclass(frozen=True)
class Golden:
    scenario: Scenario
    execution_id: str
    outcome: Outcome
    checkpoints: list[Checkpoint]
    effects: Counter[EffectKey]
    seconds: float
    # The execution's promises as the dev server holds them (ids, tags, states): its tree.
    promises: list[dict[str, Any]] = field(default_factory=list)
    # What each receiving system recorded during the run (cookbook.crash.receivers).
    received: receivers.Received = field(default_factory=dict)

    @property
    def points(self) -> list[CrashPoint]:
        return crash_points(self.scenario.name, self.checkpoints)

    def to_json(self) -> dict[str, Any]:
        """Plain data, so that parallel test processes can share one golden run."""
        return {
            "scenario": self.scenario.name,
            "execution_id": self.execution_id,
            "outcome": asdict(self.outcome),
            "checkpoints": [asdict(c) for c in self.checkpoints],
            "effects": [[*key, count] for key, count in self.effects.items()],
            "seconds": self.seconds,
            "promises": self.promises,
            "received": receivers.received_to_json(self.received),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], example: Example) -> Golden:
        scenario = next(s for s in example.scenarios if s.name == data["scenario"])
        return cls(
            scenario,
            data["execution_id"],
            Outcome(**data["outcome"]),
            [Checkpoint(**c) for c in data["checkpoints"]],
            Counter(
                {(suffix, provider, action): n for suffix, provider, action, n in data["effects"]}
            ),
            data["seconds"],
            data["promises"],
            receivers.received_from_json(data.get("received", {})),
        )


@dataclass
class CrashResult:
    point: CrashPoint
    problems: list[str] = field(default_factory=list)
    recovery_seconds: float = 0.0
    total_seconds: float = 0.0
    # The pids of the worker the run started on and, after a worker kill, of the one that took over.
    worker_pids: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


class CrashHarness:
    """Runs one example's scenarios against a dev server in fast-recovery mode and a sandbox."""

    def __init__(self, example: Example, stack: Stack) -> None:
        assert stack.embedded, "the crash harness needs the embedded dev server (tripwires)"
        self.example = example
        self.stack = stack
        # The worker that finished the last run. It is the next run's first worker, as a
        # long-lived worker would be: a run then costs one worker start-up, not two.
        self._standby: ManagedProcess | None = None
        # Fork the workers, and the dev server restarted after a server kill (cookbook.crash.
        # zygote); each zygote started when first needed. When one cannot start, its processes
        # are started as `python -m <module>`.
        self._zygotes = Zygotes()
        self.receivers = receivers.declared_by(example.path, example.name)

    def close(self) -> None:
        """Stop the worker kept for the next run."""
        if self._standby is not None:
            self._standby.stop()
            self._standby = None
        if self.stack.devserver is not None and isinstance(self.stack.devserver, ForkedProcess):
            # It dies with the zygote it was forked from: stop it first, as the stack would.
            self.stack.devserver.stop()
        self._zygotes.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public ---------------------------------------------------------------------------------

    def golden(self, scenario: Scenario) -> Golden:
        return asyncio.run(self._golden(scenario))

    def run(self, golden: Golden, point: CrashPoint) -> CrashResult:
        return asyncio.run(self._crash(golden, point))

    # -- runs -------------------------------------------------------------------------------------

    def _worker(self, name: str) -> ManagedProcess:
        # Workers run in a directory of this stack's own, which is also their TMPDIR: whatever an
        # example keeps in files (kafka-worker's store in /tmp, wlrf's data directory relative to
        # where it runs) is then never shared with the runs another test process makes meanwhile.
        private = self.stack.workdir / "worker-files"
        private.mkdir(exist_ok=True)
        env = self.stack.env(RESONATE_TTL_SECONDS=WORKER_TTL_SECONDS, TMPDIR=str(private))
        return self._zygotes.launch(
            worker_process(self.example.worker, env, name=name, cwd=private)
        )

    def _client(self) -> Resonate:
        encryptor = None
        if self.example.encryptor:
            module, _, factory = self.example.encryptor.partition(":")
            encryptor = getattr(importlib.import_module(module), factory)()
        return Resonate(
            url=self.stack.resonate_url,
            group="cookbook-harness",
            ttl=timedelta(seconds=30),
            token=self.stack.token,
            encryptor=encryptor,
        )

    def _server(self, timeout: float = 5.0) -> httpx.AsyncClient:
        """An HTTP client for the dev server's cookbook endpoints (with its token, if any)."""
        return clients.async_client(
            base_url=self.stack.resonate_url, headers=self.stack.resonate_headers, timeout=timeout
        )

    def _new_id(self, scenario: Scenario, tag: str) -> str:
        return f"{self.example.name}.{scenario.name}.{tag}.{secrets.token_hex(3)}"

    async def _start(self, client: Resonate, scenario: Scenario, execution_id: str) -> Any:
        await self._setup(scenario, execution_id)
        async with clients.async_client(base_url=self.stack.provider_url) as sandbox:
            for fault in scenario.faults:
                response = await sandbox.post(
                    "/_admin/faults", json={**fault, "key_prefix": execution_id}
                )
                response.raise_for_status()
        if self._holds_time(scenario):  # last: nothing between here and the run can fail
            await self._hold_time(client, execution_id)
        return client.options(target=self.example.group, version=scenario.version).rpc(
            execution_id, scenario.function, *scenario.args
        )

    async def _setup(self, scenario: Scenario, execution_id: str) -> None:
        async with clients.async_client() as http:
            for call in scenario.setup:
                url = self.stack.service_url(call["service"]) + call["path"]
                body = _substitute(call.get("json"), execution_id)
                headers = self.stack.resonate_headers if call["service"] == "resonate" else {}
                response = await http.request(
                    call.get("method", "POST"), url, json=body, headers=headers
                )
                response.raise_for_status()

    # -- time skipping and signals -----------------------------------------------------------
    #
    # A dev server that skips time fires the earliest timer as soon as no task is waiting for a
    # worker or leased to one: the moment a workflow suspends on a promise a signal is owed to,
    # its timeout (an idle deadline, say) would race the delivery. A scenario's signals are what
    # the outside world does in time, so while one is owed the harness holds time: it keeps a
    # task pending for a group no worker serves (a promise with a target, created before the run
    # starts, resolved once every signal is delivered). Then time skips as usual.

    def _holds_time(self, scenario: Scenario) -> bool:
        return self.example.skip_time and bool(scenario.signals)

    @staticmethod
    def _hold_id(execution_id: str) -> str:
        return f"cookbook-harness-hold.{execution_id}"

    async def _hold_time(self, client: Resonate, execution_id: str) -> None:
        in_a_day = int(time.time() * 1000) + 24 * 3600 * 1000
        target = {"resonate:target": "poll://any@cookbook-harness-hold"}
        await client.promises.create(self._hold_id(execution_id), in_a_day, Value(), target)

    async def _release_time(self, client: Resonate, execution_id: str) -> None:
        await client.promises.resolve(self._hold_id(execution_id), Value())

    @contextlib.asynccontextmanager
    async def _signalling(
        self, client: Resonate, scenario: Scenario, execution_id: str
    ) -> AsyncIterator[None]:
        """While a run is under way, answer its latent promises with the scenario's signals."""
        task = None
        if scenario.signals:
            task = asyncio.create_task(
                self._deliver_signals(client, execution_id, list(scenario.signals))
            )
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._holds_time(scenario):  # a run that failed before every signal went out
                with contextlib.suppress(Exception):
                    await self._release_time(client, execution_id)

    async def _deliver_signals(
        self, client: Resonate, execution_id: str, signals: list[Any]
    ) -> None:
        # Resolve a promise only once the workflow has suspended on it, as a person would: that
        # is what makes the "suspended" crash points real.
        # The promises it suspended on and nobody answered yet, in that order (a dict as an
        # ordered set).
        waiting: dict[str, None] = {}
        answered: set[str] = set()
        seen = 0
        async with self._server(timeout=40) as server:
            while signals:
                try:
                    page = (
                        await server.get(
                            "/_cookbook/journal",
                            # Don't wait for news while a signal is owed: deliver it now.
                            params={
                                "origin": execution_id,
                                "after": seen,
                                "wait": 0 if waiting else 10,
                            },
                        )
                    ).json()
                    seen = page["last_seq"]
                    for entry in page["entries"]:
                        promise_id = entry["promise_id"]
                        if entry["operation"] == "suspend" and promise_id not in answered:
                            waiting[promise_id] = None
                    if not waiting:
                        continue
                    state = (
                        await server.get("/_cookbook/state", params={"origin": execution_id})
                    ).json()
                    latent = {
                        p["id"]
                        for p in state["promises"]
                        if p["tags"].get("resonate:external") == "true" and p["state"] == "pending"
                    }
                    waiting = {promise_id: None for promise_id in waiting if promise_id in latent}
                    for promise_id in list(waiting):
                        if not signals:
                            break
                        await client.promises.resolve(promise_id, Value(data=signals[0]))
                        # Taken only once delivered: a signal whose delivery failed is owed still.
                        signals.pop(0)
                        answered.add(promise_id)
                        del waiting[promise_id]
                except Exception:
                    # The dev server is being killed and restarted by this very crash point (the
                    # SDK's client raises its own errors for that); try again shortly.
                    await asyncio.sleep(0.1)
        while self.example.skip_time:  # every signal is out: let time skip again
            try:
                await self._release_time(client, execution_id)
                return
            except Exception:  # the dev server is being restarted, as above
                await asyncio.sleep(0.1)

    def _first_worker(self) -> ManagedProcess:
        standby, self._standby = self._standby, None
        if standby is not None and standby.alive():
            return standby
        return self._worker("worker-1").start()

    def _keep_for_next_run(self, survivor: ManagedProcess, *others: ManagedProcess | None) -> None:
        for process in others:
            if process is not None and process is not survivor:
                process.stop()
        if survivor.alive():
            self._standby = survivor

    async def _golden(self, scenario: Scenario) -> Golden:
        execution_id = self._new_id(scenario, "golden")
        client = self._client()
        worker = self._first_worker()
        try:
            marks = await self._watermarks()
            started = time.perf_counter()
            handle = await self._start(client, scenario, execution_id)
            async with self._signalling(client, scenario, execution_id):
                outcome = await asyncio.wait_for(Outcome.of(handle), COMPLETE_TIMEOUT)
            seconds = time.perf_counter() - started
        except BaseException:
            worker.stop()
            raise
        finally:
            await client.stop()
        self._keep_for_next_run(worker)
        if outcome.state != scenario.expect:
            raise AssertionError(
                f"golden run of {scenario.name}: expected {scenario.expect}, "
                f"got {outcome.state}: {outcome.value}"
            )
        journal, promises = await self._journal(execution_id)
        effects = await self._effects(execution_id)
        requests = await self._effects(execution_id, "requests")
        found = checkpoints(execution_id, journal, promises, effects, requests)
        return Golden(
            scenario,
            execution_id,
            outcome.normalized(execution_id, effects, step_results(execution_id, promises)),
            found,
            self._effect_keys(execution_id, effects),
            seconds,
            promises,
            await self._received(marks, execution_id, effects, promises),
        )

    async def _crash(self, golden: Golden, point: CrashPoint) -> CrashResult:
        result = CrashResult(point)
        started = time.perf_counter()
        execution_id = self._new_id(golden.scenario, secrets.token_hex(2))
        first = self._first_worker()
        result.worker_pids.append(first.pid)
        if point.kills_server:
            # Ready before the kill: started after it, the first restart would take as long as
            # a cold one, and the workers' second reconnection attempt comes 3 s after the kill.
            self._zygotes.zygote_for(self.stack.devserver_to_restart())
        # Workers started to take over; stopped here also when the run fails or times out.
        taking_over: list[ManagedProcess] = []
        verified = False
        client = self._client()
        try:
            marks = await self._watermarks()
            async with self._server() as server:
                armed = await server.post(
                    "/_cookbook/tripwires", json=point.tripwire(execution_id, first.pid)
                )
                armed.raise_for_status()
            handle = await self._start(client, golden.scenario, execution_id)
            async with self._signalling(client, golden.scenario, execution_id):
                if point.phase == "stall":
                    outcome = await self._stall(first, handle, execution_id, result, taking_over)
                else:
                    outcome = await self._kill(point, first, handle, result, taking_over)
            if outcome is None:
                return result
            await self._verify(golden, point, execution_id, outcome, result, marks)
            verified = True
        except TimeoutError:
            result.problems.append(f"the execution did not complete within {COMPLETE_TIMEOUT}s")
        finally:
            if point.phase == "stall":  # a stopped worker would not even hear SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(first.pid, signal.SIGCONT)
            await client.stop()
            if verified and result.passed:  # the survivor is idle, its run complete
                self._keep_for_next_run(taking_over[-1] if taking_over else first, first)
            else:
                for process in (*taking_over, first):
                    process.stop()
            async with self._server() as server:
                await server.delete("/_cookbook/tripwires")
            result.total_seconds = time.perf_counter() - started
        return result

    async def _kill(
        self,
        point: CrashPoint,
        first: ManagedProcess,
        handle: Any,
        result: CrashResult,
        taking_over: list[ManagedProcess],
    ) -> Outcome | None:
        """Let the tripwire kill the worker (or the server), recover, and wait for the outcome.

        A worker started to take over is added to `taking_over` (none after a server kill, which
        `first` outlives). None when the run ended before the crash point.
        """
        victim = self.stack.devserver if point.kills_server else first
        assert victim is not None
        killed = await self._killed(victim, handle)
        if killed is None:
            result.problems.append("the execution ended before reaching the crash point")
            return None
        if killed != -9:
            result.problems.append(f"{victim.name} exited with {killed}, not SIGKILL")
        killed_at = time.perf_counter()
        if point.kills_server:
            await asyncio.to_thread(self.stack.restart_devserver, self._zygotes.launch)
        else:
            await self._take_over(result, taking_over)
        outcome = await asyncio.wait_for(Outcome.of(handle), COMPLETE_TIMEOUT)
        result.recovery_seconds = time.perf_counter() - killed_at
        return outcome

    async def _take_over(self, result: CrashResult, taking_over: list[ManagedProcess]) -> None:
        second = await asyncio.to_thread(self._worker("worker-2").start)
        taking_over.append(second)
        result.worker_pids.append(second.pid)

    async def _stall(
        self,
        first: ManagedProcess,
        handle: Any,
        execution_id: str,
        result: CrashResult,
        taking_over: list[ManagedProcess],
    ) -> Outcome | None:
        """Stall `first` at the wire, let another worker finish, continue `first`.

        Returns the run's outcome (None: no stall happened); the worker that took over is
        added to `taking_over`.

        Waits for events throughout: the dev server's journal shows the stalled worker's lease
        lapsing, the handle the run's end, and the journal again the late writes refused.
        """
        stalled = asyncio.ensure_future(self._journal_entry(execution_id, 0, _lapsed))
        done = asyncio.ensure_future(handle.result())
        finished, _ = await asyncio.wait(
            {stalled, done}, timeout=KILL_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if stalled not in finished:
            stalled.cancel()
            done.cancel()
            result.problems.append(
                "the execution ended before reaching the crash point"
                if done in finished
                else f"the stalled worker's lease did not lapse within {KILL_TIMEOUT}s"
            )
            return None
        done.cancel()
        stalled_at = time.perf_counter()
        await self._take_over(result, taking_over)
        outcome = await asyncio.wait_for(Outcome.of(handle), COMPLETE_TIMEOUT)
        result.recovery_seconds = time.perf_counter() - stalled_at
        journal, _ = await self._journal(execution_id)
        resumed_at = journal[-1]["seq"] if journal else 0
        os.kill(first.pid, signal.SIGCONT)
        try:
            await asyncio.wait_for(
                self._journal_entry(execution_id, resumed_at, _refused_release),
                LATE_WRITES_TIMEOUT,
            )
        except TimeoutError:
            result.problems.append(
                f"the stalled worker, continued, did not give its task up (a refused release)"
                f" within {LATE_WRITES_TIMEOUT}s"
            )
        # Fenced off, it has nothing left to do: no need for a graceful stop (0.3 s a point).
        await asyncio.to_thread(first.kill)
        journal, _ = await self._journal(execution_id)
        if accepted := accepted_late_writes(journal, resumed_at, execution_id):
            result.problems.append(
                f"the stalled worker's late writes were accepted, not fenced off: {accepted}"
            )
        return outcome

    async def _journal_entry(
        self, execution_id: str, after: int, wanted: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """The first journal entry of the execution after `after` that is `wanted` (long poll)."""
        seen = after
        async with self._server(timeout=40) as server:
            while True:
                page = (
                    await server.get(
                        "/_cookbook/journal",
                        params={"origin": execution_id, "after": seen, "wait": 10},
                    )
                ).json()
                seen = page["last_seq"]
                entries: list[dict[str, Any]] = page["entries"]
                for entry in entries:
                    if wanted(entry):
                        return entry

    async def _killed(self, victim: ManagedProcess, handle: Any) -> int | None:
        """The victim's exit code once the tripwire killed it; None if the run ended first."""
        death = asyncio.ensure_future(asyncio.to_thread(victim.wait, KILL_TIMEOUT))
        done = asyncio.ensure_future(handle.result())
        finished, _ = await asyncio.wait({death, done}, return_when=asyncio.FIRST_COMPLETED)
        if death in finished and death.exception() is None:
            done.cancel()
            return death.result()
        death.cancel()
        return None

    # -- verification ---------------------------------------------------------------------------

    async def _verify(
        self,
        golden: Golden,
        point: CrashPoint,
        execution_id: str,
        outcome: Outcome,
        result: CrashResult,
        marks: receivers.Watermarks,
    ) -> None:
        recorded = await self._effects(execution_id)
        journal, promises = await self._journal(execution_id)
        got = await self._received(marks, execution_id, recorded, promises)
        result.problems += receivers.differences(golden.received, got)
        journal = [e for e in journal if e.get("status", 200) < 400]  # refused: it did nothing
        outcome = outcome.normalized(execution_id, recorded, step_results(execution_id, promises))
        if outcome != golden.outcome:
            result.problems.append(
                f"the outcome differs from the golden run's: {outcome.state} {outcome.value},"
                f" not {golden.outcome.state} {golden.outcome.value}"
            )
        local_steps = {execution_id + c.suffix for c in golden.checkpoints if c.kind == "step"}
        wire = point.tripwire(execution_id, 0)
        rerun = rerun_after_kill(journal, wire, local_steps, await self._fired_at(wire))
        if rerun:
            labels = {execution_id + c.suffix: c.label for c in golden.checkpoints}
            again = ", ".join(f"{labels.get(p, p)} ({p.removeprefix(execution_id)})" for p in rerun)
            result.problems.append(f"checkpoints completed before the kill ran again: {again}")
        effects = self._effect_keys(execution_id, recorded)
        if effects != golden.effects:
            missing = golden.effects - effects
            extra = effects - golden.effects
            result.problems.append(
                f"effects differ from the golden run: missing {dict(missing)}, extra {dict(extra)}"
            )

    # -- receiving systems (cookbook.crash.receivers) --------------------------------------------

    def _place(self) -> receivers.Place:
        worker_dir = self.stack.workdir / "worker-files"  # see _worker
        return receivers.Place(self.stack.service_url, worker_dir, bool(self.stack.provider_url))

    async def _watermarks(self) -> receivers.Watermarks:
        place = self._place()
        return await receivers.watermarks(receivers.active(self.receivers, place), place)

    async def _received(
        self,
        marks: receivers.Watermarks,
        execution_id: str,
        effects: list[dict[str, Any]],
        promises: list[dict[str, Any]],
    ) -> receivers.Received:
        """What every receiving system recorded since `marks`, with ids named as in outcomes."""
        place = self._place()
        active = receivers.active(self.receivers, place)
        recorded = await receivers.recorded_since(active, place, marks)
        results = step_results(execution_id, promises)

        def normalise(text: str) -> str:
            return Outcome("", text).normalized(execution_id, effects, results).value

        return receivers.received(active, recorded, normalise)

    async def _journal(
        self, execution_id: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with self._server() as server:
            journal = (
                await server.get("/_cookbook/journal", params={"origin": execution_id})
            ).json()["entries"]
            state = (await server.get("/_cookbook/state", params={"origin": execution_id})).json()
        return journal, state["promises"]

    async def _effects(self, execution_id: str, kind: str = "effects") -> list[dict[str, Any]]:
        """The sandbox's records (`effects` or `requests`) for one execution's steps."""
        if not self.stack.provider_url:
            return []
        async with clients.async_client(base_url=self.stack.provider_url) as sandbox:
            response = await sandbox.get(
                f"/_admin/{kind}", params={"key_prefix": execution_id + ":"}
            )
            response.raise_for_status()
            effects: list[dict[str, Any]] = response.json()
            return effects

    async def _fired_at(self, wire: dict[str, Any]) -> int | None:
        """The journal's length when this run's tripwire fired (None if the server restarted)."""
        async with self._server() as server:
            fired = (await server.get("/_cookbook/tripwires")).json()["fired"]
        return next(
            (
                w["journal_seq"]
                for w in reversed(fired)
                if (w["operation"], w["promise_id"]) == (wire["operation"], wire["promise_id"])
            ),
            None,
        )

    @staticmethod
    def _effect_keys(execution_id: str, effects: list[dict[str, Any]]) -> Counter[EffectKey]:
        return Counter(
            (e["idempotency_key"].removeprefix(execution_id), e["provider"], e["action"])
            for e in effects
        )


def harness_stack(example: Example) -> Stack:
    """The stack the harness runs an example on: the services it declares, and always an embedded
    dev server in fast-recovery mode (its tripwires do the killing), whatever RESONATE_URL says;
    one that skips time, or requires a token, if the example asks for it."""
    environ = {k: v for k, v in os.environ.items() if k != "RESONATE_URL"}
    return stack_for(
        example.services,
        fast_recovery=True,
        environ=environ,
        skip_time=example.skip_time,
        auth=example.auth,
        model_script=example.model_script,
    )


# A journaled string shorter than this is a word ("ok", "booked"), not an id worth normalising.
MIN_ID_LENGTH = 8


def step_results(execution_id: str, promises: list[dict[str, Any]]) -> dict[str, str]:
    """The string values the execution's steps journaled, by step suffix (ids they minted)."""
    results = {}
    for promise in promises:
        data = (promise.get("value") or {}).get("data")
        if promise["id"] == execution_id or not isinstance(data, str):
            continue
        try:
            value = json.loads(base64.b64decode(data))
        except ValueError:
            continue
        if isinstance(value, str) and len(value) >= MIN_ID_LENGTH:
            results[promise["id"].removeprefix(execution_id)] = value
    return results


def _substitute(value: Any, execution_id: str) -> Any:
    if isinstance(value, str):
        return value.replace("{execution_id}", execution_id)
    if isinstance(value, list):
        return [_substitute(v, execution_id) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, execution_id) for k, v in value.items()}
    return value


def rerun_after_kill(
    journal: list[dict[str, Any]],
    wire: dict[str, Any],
    local_steps: set[str],
    kill_seq: int | None = None,
) -> list[str]:
    """Checkpoints that were complete before the kill and yet did their work again after it.

    The kill happened when the journal was `kill_seq` entries long: the dev server records that
    when a tripwire fires. Without it (a server kill loses the record with the process that kept
    it), the kill happened at the first journal entry matching an `after` tripwire, which was
    applied before it fired. (Splitting a `before` wire's journal at its first match would be
    wrong: that request was never applied, so the first match is the recovering worker's, and
    everything the recovery re-ran on the way there would count as "before the kill".)

    Evidence of work done again is a new request settling a promise that was already settled,
    or creating a local step that was (a replay gets local steps from the journal; global
    children - promises, sleeps, remote calls - are re-created idempotently on every replay,
    which does no work). A retried HTTP request keeps its corrId and is not new.
    """
    if kill_seq is not None:
        kill_at = sum(1 for e in journal if e["seq"] <= kill_seq)
    else:
        kill_at = next(
            (
                i
                for i, e in enumerate(journal)
                if e["operation"] == wire["operation"] and e["promise_id"] == wire["promise_id"]
            ),
            len(journal),
        )
        if wire["when"] == "after":
            kill_at += 1
    before, after = journal[:kill_at], journal[kill_at:]
    settled = {e["promise_id"] for e in before if e["operation"] == "settle"}
    seen = {(e["promise_id"], e["corr_id"]) for e in before}
    return sorted(
        {
            e["promise_id"]
            for e in after
            if e["promise_id"] in settled
            and (e["promise_id"], e["corr_id"]) not in seen
            and (
                e["operation"] == "settle"
                or (e["operation"] == "create" and e["promise_id"] in local_steps)
            )
        }
    )


def accepted_late_writes(
    journal: list[dict[str, Any]], resumed_at: int, execution_id: str
) -> list[str]:
    """Writes that changed a promise after a stalled worker was continued (and should not have).

    The run was complete by then, so any create, settle or suspend the server accepted after
    `resumed_at` came from the worker whose lease had lapsed: it was not fenced off.
    """
    return [
        f"{e['operation']} {e['promise_id'].removeprefix(execution_id)} ({e['status']})"
        for e in journal
        if e["seq"] > resumed_at
        and e["operation"] in ("create", "settle", "suspend")
        and e["status"] < 300
    ]


def _lapsed(entry: dict[str, Any]) -> bool:
    """The dev server let a stalled worker's lease lapse (DevServer._stall)."""
    return bool(entry["operation"] == "release" and entry["corr_id"] == "devserver-stall")


def _refused_release(entry: dict[str, Any]) -> bool:
    """A worker gave up a task it no longer held: what SDK 0.8.1 does after a fenced write."""
    return bool(entry["operation"] == "release" and entry["status"] >= 400)
