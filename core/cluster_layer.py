"""A Channels layer on Redis Cluster sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis 7).

channels-redis cannot use a cluster (channels_redis#420: redis-py's asyncio cluster client
has no pub/sub, and its Lua scripts span slots), and redis-py 7's still has none, so this
layer speaks sharded pub/sub through coredis, which routes each shard channel to the
master owning its slot. It keeps the Channels API Parley uses (``new_channel``, ``send``,
``receive``, ``group_add``, ``group_discard``, ``group_send``), so the code above it is
the same in every mode; single-Redis deployments keep channels-redis.

**Groups.** A group is one shard channel, ``parley:{<tag>}:g:<group>``. A group named
``<kind>.<room id>`` (``room.5``, ``roomq.5``) takes the room's hash tag ``r<room id>``,
the tag of every key of that room (chat/redis.py), so a room's events travel on the shard
that stores them and a room's traffic never touches another master. A process subscribes
to a group's shard channel while it has a local channel in the group, and only then: each
process hears only the rooms it holds members of. A message is published once per group
and fanned out to the group's local channels by each subscribed process.

**Point to point** (the control RPC to the process running a reply, ``/readyz``'s round
trip). Each process has one inbox, the shard channel ``parley:{p<process>}:inbox``, where
``<process>`` is 16 random hex digits: random tags spread evenly over the slots (unlike
Centrifugo's bare ``{0}``, ``{1}`` partitions, which crowd a few nodes). Its channel
names carry the process (``<prefix><process>!<random>``), so ``send`` knows the inbox.

**Failures.** Delivery is at most once, as with channels-redis's pub/sub layer: Parley
refills a lost durable event from the room's log (the room channel's gap fill and head
check). The subscriber is rebuilt, on a fresh view of the cluster, whenever it fails (a
master died, a connection dropped) or the server drops one of its subscriptions (a slot
moved away in a resharding: Redis sends ``sunsubscribe``), and every wanted channel is
subscribed again on its slot's current master.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
import weakref
from collections.abc import Iterable
from typing import Any

import msgpack
from channels.layers import BaseChannelLayer

logger = logging.getLogger(__name__)

# A group named ``<kind>.<room id>`` belongs to the room: its tag is the room's.
_ROOM_GROUP = re.compile(r"^[A-Za-z_]+\.(\d+)$")
# How long a subscription (group_add, a new channel's inbox) may wait for the subscriber
# to be up: a cluster answers in milliseconds; past this it is failing over, and the
# caller is told to try again (the handshake's 1013) instead of waiting without end.
SUBSCRIBE_TIMEOUT = 5.0
# A shard connection that heard nothing for this long is pinged: a master that died
# without closing its sockets is noticed within about this, and the subscriber rebuilt.
IDLE_PING_SECONDS = 1.0
# After a failed subscriber, wait this long before building the next (doubling to the
# max): a cluster failing over needs a few seconds to elect a new master.
REBUILD_DELAY = 0.1
REBUILD_DELAY_MAX = 2.0
# coredis's own tries before a failure reaches this layer, which then rebuilds on a fresh
# view of the cluster (its own retries would reuse the view that failed).
SUBSCRIBER_RETRIES = 1


def group_tag(group: str) -> str:
    match = _ROOM_GROUP.match(group)
    return f"r{match.group(1)}" if match else group


def group_channel(group: str) -> str:
    return f"parley:{{{group_tag(group)}}}:g:{group}"


def inbox_channel(process: str) -> str:
    return f"parley:{{p{process}}}:inbox"


class ClusterChannelLayer(BaseChannelLayer):
    extensions = ["groups"]

    def __init__(
        self,
        nodes: Iterable[tuple[str, int] | list[Any]],
        username: str | None = None,
        password: str | None = None,
        capacity: int = 5000,
        expiry: int = 60,
        **kwargs: Any,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity, **kwargs)
        self.nodes = [(str(host), int(port)) for host, port in nodes]
        self.username = username
        self.password = password
        self.process = uuid.uuid4().hex[:16]
        # A client's connections belong to the event loop that made them.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopLayer] = (
            weakref.WeakKeyDictionary()
        )

    def _here(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._loops.get(loop)
        if layer is None:
            layer = self._loops[loop] = _LoopLayer(self)
        return layer

    async def new_channel(self, prefix: str = "specific.") -> str:
        return await self._here().new_channel(prefix)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert self.valid_channel_name(channel)
        await self._here().send(channel, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        assert self.valid_channel_name(channel)
        return await self._here().receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        assert self.valid_group_name(group)
        assert self.valid_channel_name(channel)
        await self._here().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        await self._here().group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert self.valid_group_name(group)
        await self._here().publish(group_channel(group), [group, None, message])

    async def flush(self) -> None:
        await self.close()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        layer = self._loops.pop(loop, None)
        if layer is not None:
            await layer.aclose()


class _LoopLayer:
    """The layer's state in one event loop: its clients, subscriber, channels and groups."""

    def __init__(self, layer: ClusterChannelLayer) -> None:
        self.layer = layer
        self.inbox = inbox_channel(layer.process)
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.groups: dict[str, set[str]] = {}
        # The shard channels this process must hear: its inbox and its groups'.
        self.wanted: set[str] = set()
        self._pub: Any = None
        self._sub: Any = None
        self._up = asyncio.Event()  # the subscriber is up, every wanted channel subscribed
        self._pub_up = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    # --- the Channels API ---------------------------------------------------------------

    async def new_channel(self, prefix: str) -> str:
        channel = f"{prefix}{self.layer.process}!{uuid.uuid4().hex}"
        self._queue(channel)
        await self._want(self.inbox)
        return channel

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        process = channel.split("!", 1)[0][-16:]
        await self.publish(inbox_channel(process), [None, channel, message])

    async def receive(self, channel: str) -> dict[str, Any]:
        return await self._queue(channel).get()

    async def group_add(self, group: str, channel: str) -> None:
        self._queue(channel)
        self.groups.setdefault(group, set()).add(channel)
        await self._want(group_channel(group))

    async def group_discard(self, group: str, channel: str) -> None:
        members = self.groups.get(group)
        if members is None:
            return
        members.discard(channel)
        if members:
            return
        del self.groups[group]
        shard = group_channel(group)
        self.wanted.discard(shard)
        sub = self._sub
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe(shard)

    async def publish(self, shard: str, envelope: list[Any]) -> None:
        self._start()
        try:
            await asyncio.wait_for(self._pub_up.wait(), SUBSCRIBE_TIMEOUT)
            await self._pub.spublish(shard, msgpack.packb(envelope, use_bin_type=True))
        except Exception as exc:  # noqa: BLE001 - every failure here is "cannot reach it"
            raise ConnectionError(f"cluster layer: publish failed: {exc!r}") from exc

    # --- local delivery -------------------------------------------------------------------

    def _queue(self, channel: str) -> asyncio.Queue[dict[str, Any]]:
        queue = self.queues.get(channel)
        if queue is None:
            queue = self.queues[channel] = asyncio.Queue(self.layer.capacity)
        return queue

    def _deliver(self, data: bytes) -> None:
        group, channel, message = msgpack.unpackb(data, raw=False)
        targets = self.groups.get(group, ()) if group is not None else (channel,)
        for target in targets:
            queue = self.queues.get(target)
            if queue is None:
                continue
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # At most once, as channels-redis: the reader refills durable events.
                logger.warning("cluster layer: channel %s is full; a message is dropped", target)

    # --- the subscriber -------------------------------------------------------------------

    async def _want(self, shard: str) -> None:
        if shard in self.wanted and self._up.is_set():
            return
        self.wanted.add(shard)
        self._start()
        try:
            await asyncio.wait_for(self._up.wait(), SUBSCRIBE_TIMEOUT)
            if self._sub is not None and shard not in self._sub.channels:
                await asyncio.wait_for(self._sub.subscribe(shard), SUBSCRIBE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a failing subscriber is rebuilt
            raise ConnectionError(f"cluster layer: cannot subscribe {shard}: {exc!r}") from exc

    def _start(self) -> None:
        if self._owner is None or self._owner.done():
            self._owner = asyncio.create_task(self._own(), name="cluster-layer")

    def _client(self) -> Any:
        import coredis  # noqa: PLC0415 - only deployments on a cluster load it

        return coredis.RedisCluster(
            startup_nodes=[{"host": host, "port": port} for host, port in self.layer.nodes],
            username=self.layer.username,
            password=self.layer.password,
        )

    async def _own(self) -> None:
        """Hold the publishing client, and keep one subscriber up, rebuilt on failure.

        coredis's clients live inside ``async with`` (their connection tasks are
        structured), so this one task holds them for the loop's life."""
        delay = REBUILD_DELAY
        while not self._closing.is_set():
            try:
                async with self._client() as pub:
                    self._pub = pub
                    self._pub_up.set()
                    while not self._closing.is_set():
                        started = time.monotonic()
                        await self._subscribe_all()
                        if time.monotonic() - started > REBUILD_DELAY_MAX:
                            delay = REBUILD_DELAY
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, REBUILD_DELAY_MAX)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the cluster is away: try again
                logger.warning("cluster layer: publisher failed: %r", exc)
            finally:
                self._pub_up.clear()
                self._pub = None
            if not self._closing.is_set():
                await asyncio.sleep(delay)
                delay = min(delay * 2, REBUILD_DELAY_MAX)

    async def _subscribe_all(self) -> None:
        """One subscriber's life: subscribe every wanted channel, deliver until it fails or
        the server drops a subscription this process still wants (its slot moved)."""
        from coredis.exceptions import ConnectionError as CoredisConnectionError  # noqa: PLC0415
        from coredis.retry import ConstantRetryPolicy  # noqa: PLC0415

        retry = ConstantRetryPolicy(
            (CoredisConnectionError, TimeoutError), retries=SUBSCRIBER_RETRIES, delay=0.05
        )
        try:
            async with (
                self._client() as client,
                client.sharded_pubsub(
                    retry_policy=retry, max_idle_seconds=IDLE_PING_SECONDS
                ) as sub,
            ):
                if self.wanted:
                    await sub.subscribe(*sorted(self.wanted))
                self._sub = sub
                self._up.set()
                while not self._closing.is_set():
                    message = await sub.get_message()
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind in ("message", "smessage"):
                        self._deliver(message["data"])
                    elif kind == "sunsubscribe":
                        channel = message["channel"]
                        name = channel.decode() if isinstance(channel, bytes) else channel
                        if name in self.wanted:
                            logger.info("cluster layer: %s moved; resubscribing", name)
                            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - rebuilt by the caller
            logger.warning("cluster layer: subscriber failed: %r", exc)
        finally:
            self._up.clear()
            self._sub = None

    async def aclose(self) -> None:
        self._closing.set()
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.cancel()
            await asyncio.gather(owner, return_exceptions=True)
