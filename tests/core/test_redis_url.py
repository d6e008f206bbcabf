"""``REDIS_URL=redis+cluster://...``: the nodes and credentials cluster mode starts from, and
a clear error for a typo (it stops the start instead of becoming an outage later)."""

from __future__ import annotations

import pytest

from core.redis_url import ClusterAddress, is_cluster_url, parse_cluster_url


def test_the_nodes_in_order_with_default_port() -> None:
    assert parse_cluster_url("redis+cluster://10.0.0.1:7000,10.0.0.2,[::1]:7002/") == (
        ClusterAddress(nodes=[("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)])
    )


def test_credentials_come_before_the_nodes() -> None:
    address = parse_cluster_url("redis+cluster://app:s%40cret@a:1,b:2")
    assert (address.username, address.password) == ("app", "s@cret")
    assert "s@cret" not in repr(address)
    assert address.nodes == [("a", 1), ("b", 2)]
    assert parse_cluster_url("redis+cluster://:pw@a:1").username is None


def test_only_the_cluster_scheme_selects_cluster_mode() -> None:
    assert is_cluster_url("redis+cluster://a:1")
    assert is_cluster_url("REDIS+CLUSTER://a:1")
    assert not is_cluster_url("redis://a:6379/0")
    assert not is_cluster_url("")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "names no node"),
        ("redis+cluster://a:x", "bad port"),
        ("redis+cluster://a:0", "bad port"),
        ("redis+cluster://a:70000", "bad port"),
        ("redis+cluster://:1", "no host"),
        ("redis://a:1", "not a"),
    ],
)
def test_a_typo_is_named(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_cluster_url(url)


def test_a_cluster_url_selects_the_sharded_layer_and_a_plain_one_keeps_channels_redis() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.CHANNEL_LAYERS['default']['BACKEND'], settings.REDIS_CLUSTER)"
    )
    root = Path(__file__).resolve().parents[2]

    def layer(url: str) -> str:
        env = {**os.environ, "REDIS_URL": url, "DJANGO_SETTINGS_MODULE": "config.settings"}
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    assert layer("redis+cluster://10.0.0.1:7000,10.0.0.2:7001") == (
        "core.cluster_layer.ClusterChannelLayer "
        "ClusterAddress(nodes=[('10.0.0.1', 7000), ('10.0.0.2', 7001)], "
        "username=None)"
    )
    assert layer("redis://127.0.0.1:6379/0") == "channels_redis.pubsub.RedisPubSubChannelLayer None"
