"""Delivers pushed messages to the workers listening on SSE, the way the official server does.

Addresses come from the SDK untouched: `poll://any@<group>` reaches ONE live subscriber of the
group (round-robin), `poll://uni@<group>/<pid>` reaches that process only. A message for an address
nobody is listening on is held, not dropped, and handed to the first subscriber that matches: the
SDK's server re-sends an `execute` only after 30 s and never re-sends an `unblock`, so a dropped
message would stall a resumed workflow.

What is held is bounded: the same message held twice (a re-send) is held once, at most
`MAX_HELD_PER_ADDRESS` per address are kept (the oldest go first, with a warning), and messages for
a pid that has had no stream for `FORGET_ABSENT_PID_SECONDS` are dropped: that process is gone, and
the work it held leases on is handed out again when those leases lapse.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_HELD_PER_ADDRESS = 10_000
# An SDK worker reconnects at once after a stream ends (a rotation, a dev server restart); one that
# stays away this long is dead (or stopped, and then its leases were let go: see DevServer._stall).
FORGET_ABSENT_PID_SECONDS = 60.0


@dataclass(frozen=True)
class Address:
    group: str
    pid: str | None  # None: anycast to the group

    @classmethod
    def parse(cls, address: str) -> Address | None:
        scheme, _, rest = address.partition("://")
        mode, _, target = rest.partition("@")
        if scheme != "poll" or not target:
            return None
        if mode == "any":
            return cls(target, None)
        if mode == "uni" and "/" in target:
            group, _, pid = target.partition("/")
            return cls(group, pid)
        return None


@dataclass(eq=False)
class Subscriber:
    group: str
    pid: str
    # (address, message): the address travels along so an unsent message can be re-routed.
    queue: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    # (sent at, address, message) of the last messages written to this stream.
    sent: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=256))

    def lately_sent_to_the_group(self, now: float, window: float) -> list[tuple[str, str]]:
        """Anycast messages written in the last `window` seconds.

        A write succeeds once the bytes are in the kernel's buffer; if the process dies right
        after, they are lost with it. Work for the group is worth sending again (a second
        `execute` for a task already taken is refused harmlessly); unicast messages are not,
        since their only reader is gone.
        """
        return [
            (address, message)
            for at, address, message in self.sent
            if now - at <= window and address.startswith("poll://any@")
        ]


class Router:
    def __init__(
        self,
        *,
        max_held_per_address: int = MAX_HELD_PER_ADDRESS,
        forget_absent_pid_after: float = FORGET_ABSENT_PID_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._groups: dict[str, dict[str, Subscriber]] = {}
        self._turns: dict[str, itertools.count[int]] = {}
        # Insertion-ordered sets: a re-sent message is held once, in its first place.
        self._held: dict[Address, dict[tuple[str, str], None]] = {}
        self._over_bound: set[Address] = set()
        self._max_held = max_held_per_address
        # When each pid with held unicast messages was last seen with a stream (or first addressed).
        self._absent_since: dict[Address, float] = {}
        self._forget_after = forget_absent_pid_after
        self._clock = clock

    def publish(self, address: str, message: str) -> None:
        target = Address.parse(address)
        if target is None:
            log.warning("dropping a message for an address this server cannot route: %s", address)
            return
        subscriber = self._pick(target)
        if subscriber is not None:
            subscriber.queue.put_nowait((address, message))
            return
        self._forget_dead_pids()
        self._hold(target, (address, message))

    def _hold(self, target: Address, item: tuple[str, str]) -> None:
        held = self._held.setdefault(target, {})
        if item in held:
            return
        if target.pid is not None:
            self._absent_since.setdefault(target, self._clock())
        held[item] = None
        if len(held) > self._max_held:
            del held[next(iter(held))]
            if target not in self._over_bound:
                self._over_bound.add(target)
                log.warning(
                    "holding %d messages for group %r%s with no live worker; dropping the "
                    "oldest from now on (is a worker for this group running?)",
                    len(held),
                    target.group,
                    f" pid {target.pid!r}" if target.pid is not None else "",
                )

    def _forget_dead_pids(self) -> None:
        now = self._clock()
        for address, since in list(self._absent_since.items()):
            if now - since < self._forget_after:
                continue
            del self._absent_since[address]
            dropped = self._held.pop(address, {})
            self._over_bound.discard(address)
            if dropped:
                log.info(
                    "forgetting pid %r of group %r (no stream for %.0f s): dropped %d messages "
                    "held for it",
                    address.pid,
                    address.group,
                    now - since,
                    len(dropped),
                )

    def subscribe(self, group: str, pid: str) -> Subscriber:
        members = self._groups.setdefault(group, {})
        previous = members.get(pid)
        subscriber = Subscriber(group, pid)
        members[pid] = subscriber
        if previous is not None:
            # The same process reconnected before we noticed its old stream die.
            self._drain_into(previous, subscriber)
        for address in (Address(group, pid), Address(group, None)):
            self._absent_since.pop(address, None)
            self._over_bound.discard(address)
            for item in self._held.pop(address, {}):
                subscriber.queue.put_nowait(item)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber, unsent: list[tuple[str, str]]) -> bool:
        """Forget a stream; re-route what it had not sent. True if the pid has no stream left.

        A unicast message stays addressed to its pid (held until it reconnects); an anycast one
        goes to another member of the group.
        """
        members = self._groups.get(subscriber.group, {})
        if members.get(subscriber.pid) is subscriber:
            del members[subscriber.pid]
        if not members:
            self._groups.pop(subscriber.group, None)
            self._turns.pop(subscriber.group, None)
        if subscriber.pid not in members:
            self._absent_since[Address(subscriber.group, subscriber.pid)] = self._clock()
        pending = [*unsent]
        while not subscriber.queue.empty():
            pending.append(subscriber.queue.get_nowait())
        for address, message in pending:
            self.publish(address, message)
        return subscriber.pid not in members

    def live(self) -> list[tuple[str, str]]:
        return sorted((g, p) for g, members in self._groups.items() for p in members)

    def held_count(self) -> int:
        self._forget_dead_pids()
        return sum(len(q) for q in self._held.values())

    def _pick(self, target: Address) -> Subscriber | None:
        members = self._groups.get(target.group)
        if not members:
            return None
        if target.pid is not None:
            return members.get(target.pid)
        turn = next(self._turns.setdefault(target.group, itertools.count()))
        pids = sorted(members)
        return members[pids[turn % len(pids)]]

    @staticmethod
    def _drain_into(old: Subscriber, new: Subscriber) -> None:
        while not old.queue.empty():
            new.queue.put_nowait(old.queue.get_nowait())
