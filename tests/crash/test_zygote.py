"""Workers forked from a zygote are real processes that run as `python -m <worker>` would."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from cookbook import processes
from cookbook.crash.zygote import ForkedProcess, Zygote, Zygotes
from cookbook.processes import ManagedProcess, ProcessStartError

ROOT = Path(__file__).parents[2]
PROBE = "tests.crash.zygote_probe"
READY = r"probe worker \d+ ready"
# How a base zygote reads in /proc/<pid>/cmdline, after the interpreter.
BASE_ZYGOTE = ["-m", "cookbook.crash.zygote", "--control-fd"]


def probe(cwd: Path, *args: str, marker: str = "from-the-zygote") -> ManagedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "ZYGOTE_PROBE_MARKER": marker}
    argv = [sys.executable, "-m", PROBE, *args]
    return ManagedProcess("probe", argv, ready=READY, env=env, cwd=cwd)


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    started = Zygote.of(probe(tmp_path)).start()
    try:
        yield started
    finally:
        started.stop()


def report_of(process: ManagedProcess) -> dict[str, object]:
    report: dict[str, object] = json.loads(process.output[0])
    return report


def gone_within(pid_fd: int, seconds: float) -> bool:
    readable, _, _ = select.select([pid_fd], [], [], seconds)
    return bool(readable)


def test_a_forked_worker_runs_as_python_dash_m_would(zygote: Zygote, tmp_path: Path) -> None:
    with zygote.fork(probe(tmp_path, "--flag", "value")) as worker:
        report = report_of(worker)
    assert report["name"] == "__main__"
    assert report["argv"] == [str(ROOT / "tests/crash/zygote_probe.py"), "--flag", "value"]
    assert report["cwd"] == str(tmp_path)
    assert report["marker"] == "from-the-zygote"
    assert report["session_leader"] is True, "a worker runs in a session of its own"
    assert report["threads"] == 1
    assert report["stdin"] == "/dev/null"
    # Forked: its imports were done before, once, by the zygote; it is the zygote's child.
    assert report["dependency_imported_by"] == zygote.process.pid
    assert report["ppid"] == zygote.process.pid
    assert report["pid"] == worker.pid != zygote.process.pid


def test_what_libraries_import_on_first_use_is_imported_before_the_fork(
    zygote: Zygote, tmp_path: Path
) -> None:
    with probe(tmp_path) as started_alone, zygote.fork(probe(tmp_path)) as forked:
        alone, from_the_zygote = report_of(started_alone), report_of(forked)

    assert alone["lazy_imports_loaded"] == []
    assert from_the_zygote["lazy_imports_loaded"] == ["anyio._backends._asyncio", "httpcore"]


def test_what_the_zygote_imported_is_out_of_the_garbage_collectors_sight_after_the_fork(
    zygote: Zygote, tmp_path: Path
) -> None:
    # A collection in the forked process would write to every object it inherited, copying
    # every page of them: most of a short-lived worker's CPU.
    with probe(tmp_path) as started_alone, zygote.fork(probe(tmp_path)) as forked:
        alone, from_the_zygote = report_of(started_alone), report_of(forked)

    assert isinstance(alone["frozen_objects"], int)
    assert isinstance(from_the_zygote["frozen_objects"], int)
    assert alone["frozen_objects"] < 1_000  # what the interpreter itself sets aside as it starts
    assert from_the_zygote["frozen_objects"] > 10_000  # and what the zygote imported


def test_sigkill_kills_exactly_the_forked_worker_and_is_reported(
    zygote: Zygote, tmp_path: Path
) -> None:
    with (
        zygote.fork(probe(tmp_path)) as victim,
        zygote.fork(probe(tmp_path)) as bystander,
    ):
        assert victim.pid != bystander.pid
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        assert bystander.alive()
        assert zygote.process.alive()
        with zygote.fork(probe(tmp_path)) as next_one:  # forking goes on after a kill
            assert next_one.pid not in (victim.pid, bystander.pid)
        assert bystander.stop() == 0  # SIGTERM: it returns from main


def test_a_forked_workers_exit_code_is_its_own(zygote: Zygote, tmp_path: Path) -> None:
    child = zygote.spawn(["exit", "3"])
    assert child.wait(10) == 3
    assert child.stdout is not None
    assert json.loads(child.stdout.readline())["argv"][1:] == ["exit", "3"]
    child.stdout.close()


def test_a_worker_with_another_environment_is_not_forked(zygote: Zygote, tmp_path: Path) -> None:
    # What the zygote imported read its environment: another one would not be `python -m`'s.
    with pytest.raises(ValueError, match="another environment"):
        zygote.fork(probe(tmp_path, marker="another"))
    with pytest.raises(ValueError, match="another environment"):
        zygote.fork(probe(tmp_path / "elsewhere"))


def test_stopping_the_zygote_leaves_no_forked_worker_behind(tmp_path: Path) -> None:
    zygote = Zygote.of(probe(tmp_path)).start()
    try:
        worker = zygote.fork(probe(tmp_path)).start()
        pid_fd = os.pidfd_open(worker.pid)
    finally:
        zygote.stop()
    try:
        assert gone_within(pid_fd, 10), f"forked worker {worker.pid} outlived its zygote"
    finally:
        os.close(pid_fd)
        worker.stop()


def test_a_zygote_whose_imports_start_threads_refuses_to_fork(tmp_path: Path) -> None:
    # A thread's locks would be copied into every fork in whatever state they were.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "tests.crash.zygote_threads_probe"]
    threads = ManagedProcess("threads", argv, ready="ready", env=env, cwd=tmp_path)
    with pytest.raises(ProcessStartError, match="started threads"):
        Zygote.of(threads).start()


def test_forked_processes_are_managed_processes(zygote: Zygote, tmp_path: Path) -> None:
    worker = zygote.fork(probe(tmp_path))
    assert isinstance(worker, ForkedProcess)
    assert isinstance(worker, ManagedProcess)


def test_a_forked_worker_that_exits_before_it_is_ready_fails_to_start(
    zygote: Zygote, tmp_path: Path
) -> None:
    with pytest.raises(ProcessStartError, match="exited with code 3"):
        zygote.fork(probe(tmp_path, "exit", "3")).start()


def test_a_forked_worker_gets_its_own_environment(zygote: Zygote, tmp_path: Path) -> None:
    # pytest changes PYTEST_CURRENT_TEST between tests: a worker sees its own value, as it
    # would see it started as `python -m`.
    process = probe(tmp_path)
    process.env["PYTEST_CURRENT_TEST"] = "another test"
    with zygote.fork(process) as worker:
        report = report_of(worker)
    assert report["marker"] == "from-the-zygote"
    assert report["current_test"] == "another test"


# -- Zygotes: one zygote per kind of process -------------------------------------------------------


@pytest.fixture
def zygotes() -> Iterator[Zygotes]:
    """A pool of this test's own, the only one: the suite's launcher (the test process's pool,
    cookbook.testing.fixtures) is set aside, so that a process this pool leaves alone is
    started with Popen."""
    pool = Zygotes(read_when_run=["ZYGOTE_PROBE_MARKER"], fork_after=1)
    suites = processes.launch_with(None)
    try:
        yield pool
    finally:
        processes.launch_with(suites)
        pool.stop()


def test_the_first_process_of_a_kind_starts_alone_and_the_next_ones_are_forked(
    zygotes: Zygotes, tmp_path: Path
) -> None:
    first, second, third = (zygotes.launch(probe(tmp_path)) for _ in range(3))

    assert not isinstance(first, ForkedProcess)
    assert isinstance(second, ForkedProcess)
    assert isinstance(third, ForkedProcess)
    assert second.zygote is third.zygote
    with first, second:
        assert report_of(first)["ppid"] == os.getpid()
        assert report_of(second)["ppid"] == second.zygote.process.pid


def test_a_variable_read_when_run_may_differ_and_each_process_sees_its_own(
    zygotes: Zygotes, tmp_path: Path
) -> None:
    zygotes.launch(probe(tmp_path, marker="first"))  # counted, not started

    one = zygotes.launch(probe(tmp_path, marker="one"))
    other = zygotes.launch(probe(tmp_path, marker="other"))

    assert isinstance(one, ForkedProcess)
    assert isinstance(other, ForkedProcess)
    assert one.zygote is other.zygote
    with one, other:
        assert (report_of(one)["marker"], report_of(other)["marker"]) == ("one", "other")


def test_another_directory_or_variable_is_another_kind(zygotes: Zygotes, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    kinds = [probe(tmp_path), probe(elsewhere), probe(tmp_path)]
    kinds[2].env["ANOTHER"] = "variable"
    for process in kinds:
        zygotes.launch(process)

    forked = [zygotes.launch(process) for process in kinds]

    zygote_pids = {p.zygote.process.pid for p in forked if isinstance(p, ForkedProcess)}
    assert len(zygote_pids) == 3


def test_what_cannot_be_forked_starts_as_it_is(zygotes: Zygotes, tmp_path: Path) -> None:
    another_python = probe(tmp_path)
    another_python.argv[0] = str(Path(sys.executable).resolve().parent / "python3")
    not_a_module = ManagedProcess("script", [sys.executable, "-c", "pass"], ready="never")
    with_fds = probe(tmp_path)
    with_fds.pass_fds = (0,)

    for process in (another_python, not_a_module, with_fds):
        assert zygotes.launch(process) is process
        assert zygotes.launch(process) is process


def test_a_kind_whose_zygote_cannot_start_starts_as_it_is(zygotes: Zygotes, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "tests.crash.zygote_threads_probe"]

    def threads() -> ManagedProcess:
        return ManagedProcess("threads", argv, ready="ready", env=env, cwd=tmp_path)

    launched = [zygotes.launch(process) for process in (threads(), threads(), threads())]

    assert not any(isinstance(process, ForkedProcess) for process in launched)


def _command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]


def test_a_test_process_forks_every_python_dash_m_process_it_starts() -> None:
    # Whoever starts them (a fixture, a stack, a test): cookbook.testing.fixtures' launcher. The
    # first of a kind is forked from the base zygote, which has imported the libraries only; the
    # next ones from a zygote of their kind, which has imported what their module imports.
    env = {**os.environ, "ZYGOTE_PROBE_MARKER": "the suite's"}
    started = [
        ManagedProcess(
            "probe", [sys.executable, "-m", PROBE, str(n)], ready=READY, env=env, cwd=ROOT
        )
        for n in range(3)
    ]
    with started[0], started[1], started[2]:
        reports = [report_of(process) for process in started]
        parents = [report["ppid"] for report in reports]
        commands = [_command_line(int(str(parent))) for parent in parents]

    assert [cast(list[str], report["argv"])[1:] for report in reports] == [["0"], ["1"], ["2"]]
    assert all(report["name"] == "__main__" for report in reports)
    assert os.getpid() not in parents
    assert commands[0][1:4] == BASE_ZYGOTE
    assert reports[0]["dependency_imported_by"] == reports[0]["pid"], "imported after the fork"
    assert commands[1][1:4] == ["-m", "cookbook.crash.zygote", PROBE]
    assert parents[1] == parents[2] == reports[1]["dependency_imported_by"]


WHERE_AM_I = """
import gc, json, os, sys, time
report = {"cwd": os.getcwd(), "path0": sys.path[0], "ppid": os.getppid()}
print(json.dumps(report | {"frozen": gc.get_freeze_count()}))
print("where_am_i ready", flush=True)
time.sleep(60)
"""


def test_a_process_forked_from_the_base_zygote_starts_where_python_dash_m_would(
    tmp_path: Path,
) -> None:
    # A module only its own directory has: found through sys.path[0], as `python -m` finds it.
    (tmp_path / "where_am_i.py").write_text(WHERE_AM_I)
    process = ManagedProcess(
        "where", [sys.executable, "-m", "where_am_i"], ready="where_am_i ready", cwd=tmp_path
    )
    with process:
        report = report_of(process)
        parent = _command_line(int(str(report["ppid"])))

    assert parent[1:4] == BASE_ZYGOTE
    assert report["cwd"] == report["path0"] == str(tmp_path)
    assert isinstance(report["frozen"], int)
    assert report["frozen"] > 10_000  # the base zygote's libraries, out of the collector's sight


def test_another_interpreter_setting_is_not_forked_from_the_base_zygote(tmp_path: Path) -> None:
    # PYTHONPATH is read as the interpreter starts: the base zygote's sys.path is not this one's.
    process = probe(tmp_path, "alone")
    assert process.env["PYTHONPATH"] != os.environ.get("PYTHONPATH")
    with process:
        assert report_of(process)["ppid"] == os.getpid()


def _base_zygotes_of(parent: int) -> list[int]:
    """The base zygotes `parent` started: its children (by any of its threads), from /proc."""
    children = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            children += [int(child) for child in (task / "children").read_text().split()]
    found = []
    for child in children:
        with contextlib.suppress(OSError):  # a child that ended meanwhile
            if _command_line(child)[1:4] == BASE_ZYGOTE:
                found.append(child)
    return found


def test_no_base_zygote_is_started_for_a_process_it_could_not_serve(tmp_path: Path) -> None:
    pool = Zygotes(fork_after=1, base=True)
    before = _base_zygotes_of(os.getpid())
    try:
        assert pool.child_for(probe(tmp_path)) is None  # another PYTHONPATH: started as it is
        assert _base_zygotes_of(os.getpid()) == before
    finally:
        pool.stop()
