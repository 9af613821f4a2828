"""Receiving systems: what the provider, a SQLite store or a service recorded decides exactly-once.

The workflows are in tests/crash/mutants.py: `book` is correct; each mutant breaks exactly-once in
a way the workflow itself cannot see (the outcome and the journal look right).
"""

from __future__ import annotations

import json

import pytest
from cookbook import catalog
from cookbook.crash.harness import CrashHarness, CrashResult, Golden
from cookbook.crash.receivers import ReceiverError, declared, declared_by

from tests.crash.conftest import APPENDING, BOOK, WITHOUT_KEY, run_at


def receiver_problems(result: CrashResult) -> list[str]:
    return [p for p in result.problems if p.startswith("receiving system")]


def test_the_golden_run_records_what_every_receiving_system_received(
    mutants_harness: CrashHarness,
) -> None:
    golden = mutants_harness.golden(BOOK)

    assert {name: sorted(c.elements()) for name, c in golden.received.items()} == {
        "sandbox": ['{"action": "reserve", "idempotency_key": "<id>:1", "provider": "flight"}'],
        "bookings file": ['{"booking": "<id>", "confirmation": "<effect:1>"}'],
        "flight provider": ['{"action": "reserve", "provider": "flight"}'],
    }


def test_what_was_received_survives_the_trip_through_json(mutants_harness: CrashHarness) -> None:
    # Parallel test processes share golden runs as JSON (cookbook.testing.matrix).
    golden = mutants_harness.golden(BOOK)
    shared = json.loads(json.dumps(golden.to_json()))

    assert Golden.from_json(shared, mutants_harness.example) == golden


def test_a_correct_workflow_passes_at_its_after_effect_point(mutants_harness: CrashHarness) -> None:
    result = run_at(mutants_harness, mutants_harness.golden(BOOK), 1, "after-effect")

    assert result.passed, result.problems


def test_an_effect_sent_without_a_key_is_counted_at_its_after_effect_point(
    mutants_harness: CrashHarness,
) -> None:
    # The saga variant: the flight is booked twice. Outcome, journal and the keyed effect
    # count all look right; only the receiving systems' own records show the second booking.
    golden = mutants_harness.golden(WITHOUT_KEY)
    result = run_at(mutants_harness, golden, 1, "after-effect")

    assert not result.passed
    assert result.problems == receiver_problems(result), "only the receivers can see it"
    (sandbox,) = [p for p in result.problems if "'sandbox'" in p]
    assert 'extra 1x {"action": "reserve", "idempotency_key": null, "provider": "flight"}' in (
        sandbox
    )
    (http_form,) = [p for p in result.problems if "'flight provider'" in p]
    assert 'extra 1x {"action": "reserve", "provider": "flight"}' in http_form


def test_a_sqlite_receiver_catches_a_row_written_twice(mutants_harness: CrashHarness) -> None:
    golden = mutants_harness.golden(APPENDING)
    result = run_at(mutants_harness, golden, 2, "after-effect")

    (problem,) = result.problems
    assert problem.startswith("receiving system 'bookings file'")
    assert 'extra 1x {"booking": "<id>", "confirmation": "<effect:1>"}' in problem


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "sqlite": "a.db", "table": "t", "fields": ["a"], "colour": 1}, ".colour:"),
        ({"name": "x", "sqlite": "a.db", "table": "t"}, ".fields: missing"),
        ({"name": "x", "sqlite": "a.db", "table": "t; DROP", "fields": ["a"]}, ".table:"),
        ({"name": "x", "sqlite": "/etc/a.db", "table": "t", "fields": ["a"]}, ".sqlite:"),
        ({"name": "x", "service": "s", "path": "/r", "watermark": "id", "fields": "a"}, ".fields"),
        ({"name": "x", "service": "s", "path": "r", "watermark": "id", "fields": ["a"]}, ".path"),
        ({"name": "x", "fields": ["a"]}, "needs `service`"),
        (
            {"name": "sandbox", "service": "s", "path": "/r", "watermark": "i", "fields": ["a"]},
            ".name: 'sandbox' is taken",
        ),
    ],
)
def test_a_bad_declaration_names_the_example_and_the_key(
    entry: dict[str, object], message: str
) -> None:
    with pytest.raises(ReceiverError) as raised:
        declared("saga", {"receivers": [entry]})

    assert str(raised.value).startswith("saga: [tool.cookbook] receivers[0]")
    assert message in str(raised.value)


def test_every_example_whose_effects_land_outside_the_sandbox_declares_them() -> None:
    declarations = {e.name: declared_by(e.path, e.name) for e in catalog.examples()}

    assert {
        name: sorted(r.name for r in found) for name, found in declarations.items() if found
    } == {
        "batch-processor": ["sink"],
        "job-callback": ["job callbacks"],
        "k8s-drain": ["kubernetes"],
        "kafka-worker": ["user-data store"],
        "money-transfer": ["ledger"],
        "mutex": ["report generator"],
        "webhook-handler": ["order book"],
        "wlrf": ["ledger stand-in", "reference store"],
    }
