"""A fired tripwire says where in the journal it fired: the re-run check splits it there."""

from __future__ import annotations

from cookbook.devserver.protocol import Touch
from cookbook.devserver.tripwires import Tripwires


def test_a_fired_tripwire_records_the_journal_length_when_it_fired() -> None:
    journal: list[str] = ["create :1", "settle :1"]
    wires = Tripwires(journal_length=lambda: len(journal))
    before = wires.arm({"operation": "create", "promise_id": "x:2", "pid": 4242})
    after = wires.arm({"operation": "settle", "promise_id": "x:2", "when": "after", "pid": 4242})

    assert wires.take([Touch("create", "x:2")], "before") == before
    journal += ["create :1 (recovering)", "settle :1 (recovering)", "create :2", "settle :2"]
    assert wires.take([Touch("settle", "x:2")], "after") == after

    assert [(w["id"], w["journal_seq"]) for w in wires.fired_records()] == [
        (before.id, 2),
        (after.id, 6),
    ]
