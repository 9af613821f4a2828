"""An example's gateway, run as the example runs it: for tests that talk to it over HTTP only.

The gateway is a process of its own (`python -m <gateway>`), with the services the example
declares (a dev server, the provider sandbox, the Kubernetes stand-in) and one worker of its
group, so that what a request starts really runs. Every process is stopped by its pid on exit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cookbook.catalog import Example
from cookbook.stack import gateway_process, stack_for, url_of, worker_process


def gateway_examples(examples: list[Example]) -> list[Example]:
    """The examples that declare a gateway (`[tool.cookbook] gateway`)."""
    return [example for example in examples if example.gateway is not None]


@contextmanager
def running_gateway(example: Example, workdir: Path) -> Iterator[str]:
    """Start the example's services, a worker and its gateway; yield the gateway's base URL."""
    assert example.gateway is not None, f"{example.name} declares no gateway"
    # The gateway and worker learn where everything is from the environment alone, as in
    # production; a RESONATE_URL of the caller's would point them at another server.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    with stack_for(
        example.services,
        workdir=workdir,
        environ=environ,
        auth=example.auth,
        model_script=example.model_script,
    ) as stack:
        env = stack.env()
        with (
            worker_process(example.worker, env),
            gateway_process(example.gateway, env) as gateway,
        ):
            yield url_of(gateway)
