"""`promise.search` narrowed by the application-tag index finds what a scan of all finds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cookbook.devserver.state import DurableState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TAG_VALUES = {"order": ["o1", "o2"], "kind": ["a", "b"], "resonate:origin": ["w1", "w2"]}

tag_sets = st.fixed_dictionaries(
    {}, optional={key: st.sampled_from(values) for key, values in TAG_VALUES.items()}
)


def _scan(state: DurableState, status: str | None, tags: dict[str, str]) -> list[str]:
    promises = sorted(state.server.promises.values(), key=lambda p: (p.created_at, p.id))
    return [
        p.id
        for p in promises
        if (status is None or p.state == status)
        and all(p.tags.get(k) == v for k, v in tags.items())
    ]


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same cases on every run
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    created=st.lists(st.tuples(tag_sets, st.booleans()), max_size=25),
    status=st.sampled_from([None, "pending", "resolved"]),
    wanted=tag_sets,
    limit=st.integers(1, 4),
)
def test_an_indexed_search_pages_through_what_a_scan_finds(
    tmp_path_factory: Any,
    created: list[tuple[dict[str, str], bool]],
    status: str | None,
    wanted: dict[str, str],
    limit: int,
) -> None:
    state = DurableState(Path(tmp_path_factory.mktemp("search")), fsync=False)
    state.open()
    try:
        for i, (tags, settle) in enumerate(created):
            state.apply(
                {
                    "kind": "promise.create",
                    "corrId": "c",
                    "id": f"p{i}",
                    "timeoutAt": 10**12,
                    "param": {},
                    "tags": tags,
                }
            )
            if settle:
                state.apply(
                    {
                        "kind": "promise.settle",
                        "corrId": "c",
                        "id": f"p{i}",
                        "state": "resolved",
                        "value": {},
                    }
                )
        found: list[str] = []
        cursor: str | None = None
        while True:
            request: dict[str, Any] = {
                "kind": "promise.search",
                "corrId": "s",
                "tags": wanted,
                "limit": limit,
            }
            if status is not None:
                request["state"] = status
            if cursor is not None:
                request["cursor"] = cursor
            page = state.apply(request).response
            found += [p["id"] for p in page["promises"]]
            cursor = page["cursor"]
            if cursor is None:
                break
        assert found == _scan(state, status, wanted)
    finally:
        state.close()
