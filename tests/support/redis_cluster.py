"""A real Redis Cluster on loopback: 3 masters and 3 replicas, each a redis-server of its own.

Started from ``redis-server --cluster-enabled yes`` and ``redis-cli --cluster create``, in
its own temporary directory (node files), nothing saved to disk. Ports are at most 55535,
since each node's cluster bus listens on its port + 10000.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

# The cluster bus listens at port + 10000, which must be a port too.
MAX_PORT = 55535
# Forming a cluster on loopback takes a second or two; a CI machine under load, more.
FORM_TIMEOUT = 60.0
# A replica notices its master's death after cluster-node-timeout and takes over: short,
# so the failover test's reply is still running when it happens.
NODE_TIMEOUT_MS = 1000


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` ports whose bus ports (+10000) are free too."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, MAX_PORT)
        if port in chosen or not (_free(port) and _free(port + 10000)):
            continue
        chosen.append(port)
    return chosen


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


@dataclass
class RedisCluster:
    masters: int = 3
    replicas: int = 1
    nodes: list[Node] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()  # never leave half a cluster running
            raise

    def _start(self) -> RedisCluster:
        binary = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if binary is None or cli is None:
            raise FileNotFoundError("redis-server and redis-cli are needed for a cluster")
        self.workdir = Path(tempfile.mkdtemp(prefix="parley-cluster-"))
        ports = free_ports(self.masters * (1 + self.replicas))
        for port in ports:
            home = self.workdir / str(port)
            home.mkdir()
            proc = subprocess.Popen(
                [
                    binary,
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(home / "nodes.conf"),
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    "--save", "",
                    "--appendonly", "no",
                    # A replica that has never synced cannot take over: sync at once.
                    "--repl-diskless-sync-delay", "0",
                    "--dir", str(home),
                    "--daemonize", "no",
                    "--logfile", str(home / "log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.nodes.append(Node(port, proc))
        for node in self.nodes:
            self._wait(lambda n=node: n.client().ping(), f"node {node.port} to answer")
        subprocess.run(
            [
                cli, "--cluster", "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas", str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=FORM_TIMEOUT,
        )  # fmt: skip
        self._wait(self._formed, "the cluster to be ok on every node")
        return self

    def _formed(self) -> bool:
        for node in self.alive():
            info = _text(node.client().execute_command("CLUSTER", "INFO"))
            if "cluster_state:ok" not in info:
                return False
            nodes = _text(node.client().execute_command("CLUSTER", "NODES"))
            if nodes.count("master") < self.masters or "fail" in nodes:
                return False
            role = node.client().execute_command("ROLE")
            if role[0] in (b"slave", "slave") and role[3] not in (b"connected", "connected"):
                return False  # a replica that never synced could not take over
        return True

    def _wait(self, check: object, what: str) -> None:
        deadline = time.monotonic() + FORM_TIMEOUT
        while True:
            try:
                if check():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {FORM_TIMEOUT} s for {what}")
            time.sleep(0.05)  # polling a server's state, not synchronising with Parley

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def slot_owner(self, key: str) -> Node:
        """The master now serving ``key``'s slot."""
        any_node = self.alive()[0].client()
        slot = int(any_node.execute_command("CLUSTER", "KEYSLOT", key))
        for start, end, master, *_ in any_node.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise LookupError(f"no master serves slot {slot}")

    def node_id(self, node: Node) -> str:
        return _text(node.client().execute_command("CLUSTER", "MYID"))

    def masters_now(self) -> list[Node]:
        out = []
        for node in self.alive():
            role = node.client().execute_command("ROLE")[0]
            if role in (b"master", "master"):
                out.append(node)
        return out

    def kill(self, node: Node) -> None:
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(10)

    def fail_over(self, master: Node) -> None:
        """Kill ``master``; return once a replica serves its slots and the cluster is ok."""
        port = master.port
        self.kill(master)

        def promoted() -> bool:
            for node in self.alive():
                for _start, _end, owner, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
                    if int(owner[1]) == port:
                        return False
                info = _text(node.client().execute_command("CLUSTER", "INFO"))
                if "cluster_state:ok" not in info:
                    return False
            return True

        self._wait(promoted, f"a replica to take over from {port}")

    def keyslot(self, key: str) -> int:
        return int(self.alive()[0].client().execute_command("CLUSTER", "KEYSLOT", key))

    def move_slot(self, slot: int, target: Node) -> None:
        """Reshard one slot to ``target`` as ``redis-cli --cluster reshard`` does: mark it
        importing and migrating, MIGRATE its keys one at a time (the room's appends meet
        a slot half moved: ASK redirects and TRYAGAIN), then assign it everywhere."""
        source = next(n for n in self.masters_now() if slot in self._slots_of(n))
        if source.port == target.port:
            raise ValueError("the slot is already on that node")
        src, dst = source.client(), target.client()
        src_id, dst_id = self.node_id(source), self.node_id(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
            src.execute_command(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
            )
        for node in (target, source, *self.masters_now()):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def _slots_of(self, node: Node) -> set[int]:
        out: set[int] = set()
        for start, end, owner, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
            if int(owner[1]) == node.port:
                out.update(range(start, end + 1))
        return out

    def wait_ok(self) -> None:
        """Until every node still alive says the cluster is ok (a failover completed)."""

        def ok() -> bool:
            return all(
                "cluster_state:ok" in _text(n.client().execute_command("CLUSTER", "INFO"))
                for n in self.alive()
            )

        self._wait(ok, "the cluster to be ok again")

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(10)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
