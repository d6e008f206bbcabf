"""The multi-process guarantees of tests/chat/test_multiprocess.py, unchanged, on a Redis
Cluster: two daphnes with ``REDIS_URL=redis+cluster://...`` (this package's ``redis_url``),
the store on the cluster client and fan-out on sharded pub/sub (core/cluster_layer.py).

Ordering, exact resume on the other process, a stop sent across processes, the orphan sweep
of a killed process, a slow reader's cut and the shared send limit. The Redis restart test
is left out: a cluster node's death is the failover test (test_cluster_faults.py).
"""

from __future__ import annotations

import pytest

from tests.chat.test_multiprocess import (  # noqa: F401 - fixtures and tests, collected here
    members,
    pair,
    test_a_stalled_client_is_cut_off_with_4408_and_others_go_on,
    test_killed_process_leaves_its_reply_interrupted_with_saved_text,
    test_members_on_two_processes_see_the_same_ordered_stream,
    test_reconnect_to_the_other_process_gets_exactly_the_rest,
    test_send_rate_limit_is_shared_across_processes,
    test_stop_sent_to_the_other_process_closes_upstream,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]
