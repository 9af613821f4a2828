"""hello end to end: a real dev server, a worker process, the provider sandbox."""

from __future__ import annotations

import asyncio
import secrets

from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from resonate.resonate import Resonate


async def _greet_twice(url: str, execution_id: str) -> tuple[object, object]:
    client = Resonate(url=url, group="hello-tests")
    try:
        first = client.options(target="hello").rpc(execution_id, "greet", "Ada")
        second = client.options(target="hello").rpc(execution_id, "greet", "Ada")
        return await asyncio.wait_for(asyncio.gather(first.result(), second.result()), 30)
    finally:
        await client.stop()


def test_greets_once_per_channel_even_when_started_twice(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    start_worker(
        "hello.worker",
        {"RESONATE_URL": devserver.url, "PROVIDER_API_URL": sandbox.url, "PATH": "/usr/bin:/bin"},
    )
    execution_id = f"hello-test-{secrets.token_hex(4)}"

    first, second = asyncio.run(_greet_twice(devserver.url, execution_id))

    assert first == second
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert [(e.provider, e.action) for e in effects] == [("email", "send"), ("sms", "send")]
    assert first == {"email": effects[0].resource_id, "sms": effects[1].resource_id}
    assert effects[0].body == {"to": "Ada", "text": "Hello, Ada!"}
