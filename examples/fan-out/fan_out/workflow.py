"""The durable workflow: notify someone on four channels at once (fan-out), then collect (fan-in).

Each channel is its own durable step, so each one is checkpointed, retried and recovered on its
own: a flaky channel retries alone, and after a crash only the channels whose result was not yet
stored are sent again (with the same Idempotency-Key, so the provider does not send twice).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from resonate.context import Context
from resonate.retry import Constant

from fan_out.steps import ChannelUnavailableError, Delivery, send

CHANNELS = ("email", "sms", "slack", "push")

# The recipient, by reference: each channel's provider resolves it to its own address, number,
# workspace member or device. The Resonate server stores `notify`'s arguments in plaintext, so
# they carry no email address, phone number or name.
RECIPIENT = re.compile(r"cus_[A-Za-z0-9]{4,32}")

# A channel that is down gets 3 more attempts, 1 s apart: one still down after about 3 s is
# reported as unconfirmed rather than holding up the other channels' receipts, which the caller is
# waiting for. Over so short a window backing off would gain nothing, so the delay is constant.
# (Delays are whole seconds: the SDK's policies take `int`.) A refusal is never retried.
RETRY = Constant(delay=1, max_retries=3)


@dataclass
class Notification:
    """Per channel: a receipt, a refusal (`failed`), or why it is `unconfirmed`."""

    receipts: dict[str, str] = field(default_factory=dict)
    # The provider refused the message (a 4xx, bar 408 and 429): not sent, for sure.
    failed: dict[str, str] = field(default_factory=dict)
    # Out of retries on failures that may have landed (a timeout, a dropped connection, a 5xx, a
    # 2xx without its answer), on the last attempt or an earlier one: the message may have been
    # sent. Not "failed": a caller who resends it under a new key could send it twice. The
    # provider holds this channel's Idempotency-Key (its step's id, `<execution id>:<n>`), so a
    # resend under that key cannot.
    unconfirmed: dict[str, str] = field(default_factory=dict)


def validate(to: str) -> None:
    """A recipient that is not a reference (an email address, a name) is sent nothing."""
    if not (isinstance(to, str) and RECIPIENT.fullmatch(to)):
        # Not the value itself: the server stores this error too, as the execution's result.
        raise ValueError(
            "invalid notification: to is not a recipient reference"
            " (cus_ and 4 to 32 letters or digits)"
        )


async def notify(ctx: Context, to: str, text: str) -> Notification:
    validate(to)  # before the first step: a bad recipient fails at once, and nothing is sent
    # Every step starts here, before any is awaited: the four channels are sent concurrently.
    sending = [ctx.options(retry_policy=RETRY).run(send, channel, to, text) for channel in CHANNELS]
    deliveries: list[Delivery] = []
    unconfirmed: dict[str, str] = {}
    # Awaited in a fixed order (not as they finish), so every replay makes the same calls.
    for channel, delivery in zip(CHANNELS, sending, strict=True):
        try:
            deliveries.append(await delivery)
        except ChannelUnavailableError as exc:  # still failing after every retry: maybe sent
            unconfirmed[channel] = str(exc)
    return Notification(
        receipts={d.channel: d.receipt for d in deliveries if d.receipt},
        failed={d.channel: d.failure for d in deliveries if d.failure},
        unconfirmed=unconfirmed,
    )
