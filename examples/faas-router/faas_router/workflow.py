"""The router's durable orchestration: one video job, three call shapes to the executor pool.

Every call goes to the executors' group by name (`target=EXECUTORS`), so the router needs none
of the executors' code, and any live executor takes each call.
"""

from __future__ import annotations

from typing import Any

from resonate.context import Context

# The executors' worker group: a pool of replaceable processes, any of which runs any call.
EXECUTORS = "faas-executors"


async def process_video(ctx: Context, video: str, audit: bool = True) -> dict[str, Any]:
    on_executors = ctx.options(target=EXECUTORS)
    audit_id = None
    if audit:
        # Fire and forget: the audit record runs on its own; awaiting gives only its id (once
        # its promise exists), kept in the result so anyone can look the record up later.
        audit_id = await on_executors.detached("record_audit", video)
    # Start, then await: the transcode starts on an executor now (SDK 0.8.1 starts a call
    # eagerly, not on await) and runs while the thumbnail is made.
    transcoding = on_executors.rpc("transcode", video)
    # Awaited at once: the router waits here for the thumbnail.
    thumbnail = await on_executors.rpc("thumbnail", video)
    rendition = await transcoding
    return {"thumbnail": thumbnail, "rendition": rendition, "audit_id": audit_id}
