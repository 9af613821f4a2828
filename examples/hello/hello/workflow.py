"""The durable workflow: greet someone by email, then by SMS.

Each `ctx.run` is a checkpoint. Once a step's result is stored, no crash makes it run again:
a worker that picks the workflow up after a crash replays it from the top and gets the results
of finished steps from the journal instead of calling the providers again.
"""

from __future__ import annotations

from resonate.context import Context

from hello.steps import send_email, send_sms


async def greet(ctx: Context, name: str) -> dict[str, str]:
    email = await ctx.run(send_email, name, f"Hello, {name}!")
    sms = await ctx.run(send_sms, name, f"Hi {name}, check your inbox.")
    return {"email": email, "sms": sms}
