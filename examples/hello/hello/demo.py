"""`python -m hello.demo [name]`: start one `greet` workflow on the workers and print the result."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from resonate.resonate import Resonate


async def main(name: str) -> None:
    # A client, not a worker: it joins its own group so it is never handed workflow work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="hello-clients")
    try:
        execution_id = f"hello-{name.lower()}-{int(time.time())}"
        print(f"→ greet({name!r}) as execution {execution_id}")
        handle = resonate.options(target="hello").rpc(execution_id, "greet", name)
        # This client did not register `greet`, so each delivery arrives as plain JSON.
        deliveries = await handle.result()
        for channel, delivery in deliveries.items():
            if delivery["receipt"] is not None:
                print(f"✓ {channel:<5} receipt {delivery['receipt']}")
            else:
                print(f"✗ {channel:<5} refused: {delivery['refusal']}")
    finally:  # also when the workflow failed: the client's connection and tasks end here
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "Ada"))
