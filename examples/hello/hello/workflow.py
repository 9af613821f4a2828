"""The durable workflow: greet someone by email, then by SMS.

Each `ctx.run` is a checkpoint. Once a step's result is stored, no crash makes it run again:
a worker that picks the workflow up after a crash replays it from the top and gets the results
of finished steps from the journal instead of calling the providers again.
"""

from __future__ import annotations

from resonate.context import Context
from resonate.retry import Exponential

from hello.steps import Delivery, send_email, send_sms

# A provider that is down gets 4 more attempts, 2, 4, 8 and 16 s apart: about 30 s, enough to
# ride out a restart or a burst of 503s/429s. Longer than that is an outage: the step's
# ProviderUnavailableError fails the execution, which the caller sees. A refusal is not retried
# at all: the step returns it.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=16)


async def greet(ctx: Context, name: str) -> dict[str, Delivery]:
    step = ctx.options(retry_policy=STEP_RETRIES)
    email = await step.run(send_email, name, f"Hello, {name}!")
    if email.refusal is not None:
        return {"email": email}  # no SMS that points to an email that was never sent
    sms = await step.run(send_sms, name, f"Hi {name}, check your inbox.")
    return {"email": email, "sms": sms}
