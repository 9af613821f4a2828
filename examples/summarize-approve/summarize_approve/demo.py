"""`python -m summarize_approve.demo`: start one `run` workflow on the workers and print the result."""

from __future__ import annotations

import asyncio
import os
import time

from resonate.resonate import Resonate


async def main() -> None:
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="summarize-approve-clients")
    execution_id = f"summarize-approve-{int(time.time())}"
    print(f"→ run('first') as execution {execution_id}")
    result = (
        await resonate.options(target="summarize-approve")
        .rpc(execution_id, "run", "first")
        .result()
    )
    print(f"✓ {result}")
    await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
