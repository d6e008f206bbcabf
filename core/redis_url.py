"""``REDIS_URL`` in cluster mode: ``redis+cluster://[user:password@]host:port,host:port,...``.

Parsed once, in settings: the store's cluster client (chat/redis.py) and the cluster
channel layer (core/cluster_layer.py) both take the nodes from ``settings.REDIS_CLUSTER``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

CLUSTER_SCHEME = "redis+cluster://"
DEFAULT_PORT = 6379


@dataclass(frozen=True)
class ClusterAddress:
    nodes: list[tuple[str, int]]
    username: str | None = None
    # Kept out of the repr, so settings dumps and logs never show it.
    password: str | None = field(default=None, repr=False)


def is_cluster_url(url: str) -> bool:
    return url.lower().startswith(CLUSTER_SCHEME)


def parse_cluster_url(url: str) -> ClusterAddress:
    """The startup nodes (any one finds the rest) and the credentials, if any.

    ``ValueError`` names what is wrong: a settings typo must stop the start, not turn into
    an outage later.
    """
    if not is_cluster_url(url):
        raise ValueError(f"not a {CLUSTER_SCHEME} URL")
    rest = url[len(CLUSTER_SCHEME) :].split("/", 1)[0].split("?", 1)[0]
    username = password = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user, _, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) or None
    nodes: list[tuple[str, int]] = []
    for part in rest.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):  # [::1]:7000
            host, _, port = part[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        if not host:
            raise ValueError(f"REDIS_URL: no host in {part!r}")
        try:
            number = int(port) if port else DEFAULT_PORT
        except ValueError:
            raise ValueError(f"REDIS_URL: bad port in {part!r}") from None
        if not 0 < number < 65536:
            raise ValueError(f"REDIS_URL: bad port in {part!r}")
        nodes.append((host, number))
    if not nodes:
        raise ValueError("REDIS_URL: a redis+cluster:// URL names no node")
    return ClusterAddress(nodes=nodes, username=username, password=password)
