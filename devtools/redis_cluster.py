"""A real local Redis Cluster for tests and the dev stack: N masters with R replicas each, every node
an :class:`~devtools.servers.EmbeddedRedis` (``--cluster-enabled yes``), formed through redis-py."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any, Self

import redis
import redis.cluster

from devtools.servers import DevServerError, EmbeddedRedis, free_port

__all__ = ["TOTAL_SLOTS", "EmbeddedRedisCluster"]

#: Redis Cluster's hash slots.
TOTAL_SLOTS = 16384


class EmbeddedRedisCluster:
    """``masters`` masters with ``replicas`` replicas each, slots split evenly; ``start`` blocks
    until every node reports ``cluster_state:ok`` and every replica is attached."""

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 1500,
        startup_timeout: float = 60.0,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and a non-negative replica count")
        self._host = host
        self._masters = masters
        self._replicas = replicas
        self._timeout = startup_timeout
        config = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": str(node_timeout_ms),
            # A replica may take over even when it has been cut off for a while (tests kill masters).
            "cluster-replica-validity-factor": "0",
            # The survivors keep serving the slots they own while a master is down.
            "cluster-require-full-coverage": "no",
        }
        # The cluster bus listens on a port of its own (by default the client port + 10000, which
        # fails for the kernel's high ephemeral ports): each node gets one picked like its own.
        self._bus_ports = [free_port(host) for _ in range(masters * (1 + replicas))]
        self.nodes = [
            EmbeddedRedis(host=host, config={**config, "cluster-port": str(bus)}) for bus in self._bus_ports
        ]

    # -- properties -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://host:port`` of the first node (any node answers with redirections)."""
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[str]:
        """``host:port`` of every node."""
        return [f"{self._host}:{node.port}" for node in self.nodes]

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start every node, form the cluster (MEET, ADDSLOTSRANGE, REPLICATE) and wait until it is ok."""
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (and delete their data dirs). Idempotent."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, node: EmbeddedRedis) -> redis.Redis:
        """A plain (non-cluster) client on one node."""
        return redis.Redis(host=self._host, port=node.port, socket_timeout=5.0, decode_responses=True)

    def masters(self) -> list[EmbeddedRedis]:
        """The running nodes that are masters now (roles change with failovers)."""
        found = []
        for node in self.nodes:
            if not node.is_running():
                continue
            with contextlib.suppress(redis.RedisError), self.client(node) as client:
                if client.info("replication").get("role") == "master":
                    found.append(node)
        return found

    def replica_of(self, master: EmbeddedRedis) -> EmbeddedRedis:
        """A running replica of ``master``."""
        with self.client(master) as client:
            master_id = str(client.execute_command("CLUSTER", "MYID"))
        for node in self.nodes:
            if node is master or not node.is_running():
                continue
            with contextlib.suppress(redis.RedisError), self.client(node) as client:
                info = client.info("replication")
                if info.get("role") == "slave" and info.get("master_port") == master.port:
                    return node
        raise DevServerError(f"no running replica of the master on port {master.port} (id {master_id})")

    def failover(self, master: EmbeddedRedis, timeout: float = 30.0) -> EmbeddedRedis:
        """A manual failover (CLUSTER FAILOVER on a replica of ``master``): the replica becomes the
        master of its slots, the old master its replica; returns the new master once all agree."""
        replica = self.replica_of(master)
        with self.client(replica) as client:
            client.execute_command("CLUSTER", "FAILOVER")
        self._wait_promoted(replica, timeout, "did not take over")
        return replica

    def kill(self, node: EmbeddedRedis, timeout: float = 30.0) -> EmbeddedRedis:
        """SIGKILL a master and wait until the cluster is ok again: its replica won the vote of the
        other masters (a failover that may lose writes not yet replicated); returns the new master."""
        replica = self.replica_of(node)
        pid = node.pid
        if pid is None:
            raise DevServerError(f"the node on port {node.port} is not running")
        os.kill(pid, signal.SIGKILL)
        self._wait_promoted(replica, timeout, "was not elected")
        return replica

    def elect(self, replica: EmbeddedRedis, timeout: float = 60.0) -> None:
        """Let a replica held back with ``cluster-replica-no-failover yes`` take over from its
        dead master: until it is elected and the cluster is ok again."""
        with self.client(replica) as client:
            client.config_set("cluster-replica-no-failover", "no")
        self._wait_promoted(replica, timeout, "was not elected")

    def _wait_promoted(self, replica: EmbeddedRedis, timeout: float, failure: str) -> None:
        """Until ``replica`` says it is a master, then until the cluster is ok again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError), self.client(replica) as client:
                if client.info("replication").get("role") == "master":
                    break
            time.sleep(0.1)
        else:
            raise DevServerError(f"the replica on port {replica.port} {failure} in time")
        self.wait_ok(timeout)

    def revive(self, node: EmbeddedRedis, timeout: float = 30.0) -> None:
        """Start a killed node again (same port, data dir and nodes.conf): it rejoins as a replica
        of the master that replaced it; returns once the cluster is ok with it."""
        node.restart(hard=True)
        self.wait_ok(timeout)

    def move_slot(self, slot: int, target: EmbeddedRedis, *, batch: int = 1, pause: float = 0.0) -> None:
        """Reshard one hash slot to ``target`` (a master) as redis-cli does: IMPORTING/MIGRATING,
        MIGRATE its keys ``batch`` at a time (``pause`` seconds apart, so clients meet the slot
        half-moved: ASK redirections, TRYAGAIN for multi-key commands), then SETSLOT NODE on
        every master."""
        source = self.master_of(slot)
        if source is target:
            return
        with self.client(source) as from_client, self.client(target) as to_client:
            source_id = str(from_client.execute_command("CLUSTER", "MYID"))
            target_id = str(to_client.execute_command("CLUSTER", "MYID"))
            to_client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            from_client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while True:
                keys = from_client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                from_client.execute_command("MIGRATE", self._host, target.port, "", 0, 5000, "KEYS", *keys)
                time.sleep(pause)
            for node in self.masters():
                with self.client(node) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_ok()

    def master_of(self, slot: int) -> EmbeddedRedis:
        """The running master serving a hash slot now (as the cluster's slot map says)."""
        start = next(node for node in self.nodes if node.is_running())
        with redis.cluster.RedisCluster(host=self._host, port=start.port) as client:
            port = client.nodes_manager.get_node_from_slot(slot).port
        return next(node for node in self.nodes if node.port == port)

    def wait_ok(self, timeout: float | None = None) -> None:
        """Until every running node reports ``cluster_state:ok``, replicas linked, all masters up."""
        deadline = time.monotonic() + (timeout if timeout is not None else self._timeout)
        problem: str | None = "not checked"
        while time.monotonic() < deadline:
            problem = self._problem()
            if problem is None:
                return
            time.sleep(0.1)
        raise DevServerError(f"the Redis cluster did not become ok in time: {problem}")

    # -- internals --------------------------------------------------------------------------------

    def _form(self) -> None:
        first = self.nodes[0]
        with self.client(first) as client:
            for node, bus_port in zip(self.nodes[1:], self._bus_ports[1:], strict=True):
                client.execute_command("CLUSTER", "MEET", self._host, node.port, bus_port)
        ids = []
        for node in self.nodes:
            with self.client(node) as client:
                ids.append(str(client.execute_command("CLUSTER", "MYID")))
        per_master = TOTAL_SLOTS // self._masters
        for index in range(self._masters):
            first_slot = index * per_master
            last_slot = TOTAL_SLOTS - 1 if index == self._masters - 1 else first_slot + per_master - 1
            with self.client(self.nodes[index]) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first_slot, last_slot)
        self._wait_known(len(self.nodes))
        for replica_index in range(self._masters, len(self.nodes)):
            master_index = (replica_index - self._masters) % self._masters
            master_id = ids[master_index]
            with self.client(self.nodes[replica_index]) as client:
                self._retry(lambda c=client, m=master_id: c.execute_command("CLUSTER", "REPLICATE", m))
        self.wait_ok()

    def _retry(self, action: Any) -> None:
        """CLUSTER REPLICATE fails until the node has learnt the master through gossip."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                action()
                return
            except redis.ResponseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _wait_known(self, count: int) -> None:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if all(self._known(node) >= count for node in self.nodes):
                return
            time.sleep(0.1)
        raise DevServerError("the Redis cluster's nodes did not learn of each other in time")

    def _known(self, node: EmbeddedRedis) -> int:
        with self.client(node) as client:
            text = str(client.execute_command("CLUSTER", "NODES"))
        return sum(1 for line in text.splitlines() if line.strip() and "handshake" not in line)

    def _problem(self) -> str | None:
        """None when the cluster is ok as every running node sees it, else what is not."""
        running = [node for node in self.nodes if node.is_running()]
        for node in running:
            try:
                with self.client(node) as client:
                    info = client.execute_command("CLUSTER", "INFO")
                    text = info if isinstance(info, str) else str(info)
                    if "cluster_state:ok" not in text:
                        return f"node {node.port}: cluster_state not ok"
                    replication = client.info("replication")
            except redis.RedisError as exc:
                return f"node {node.port}: {exc}"
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return f"replica {node.port}: link to its master is {replication.get('master_link_status')}"
        masters = [node for node in running if self._is_master(node)]
        if len(masters) < self._masters:
            return f"{len(masters)} of {self._masters} masters up"
        return None

    def _is_master(self, node: EmbeddedRedis) -> bool:
        with self.client(node) as client:
            if client.info("replication").get("role") != "master":
                return False
            owned = str(client.execute_command("CLUSTER", "NODES"))
        return any("myself,master" in line and len(line.split()) > 8 for line in owned.splitlines())
