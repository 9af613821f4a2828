"""`python -m faas_router.demo`: route one video job through the executors and show each shape."""

from __future__ import annotations

import asyncio
import os
import time

from resonate.resonate import Resonate


async def main() -> None:
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="faas-router-clients")
    try:
        job = f"video-job-{int(time.time())}"
        print(f"→ process_video('intro.mp4') as execution {job} on the router's group")
        handle = resonate.options(target="faas-router").rpc(job, "process_video", "intro.mp4")
        result = await handle.result()
        print(f"✓ thumbnail (awaited at once):      {result['thumbnail']}")
        print(f"✓ rendition (started, then awaited): {result['rendition']}")
        audit_id = result["audit_id"]
        print(f"→ audit record (detached): the router kept only its id, {audit_id}")
        audit = await (await resonate.get(audit_id)).result()
        print(f"✓ looked up by that id later: {audit}")
        record = await resonate.promises.get(audit_id)
        print(f"  (resonate.promises.get: state {record.state})")
    finally:
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
