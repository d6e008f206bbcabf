"""The ``online`` list a joining member's ``hello`` carries (chat/presence.py).

The list is read at most PARLEY_PRESENCE_DEBOUNCE ago and shared by a burst of joins, so
each join adds itself: it must see itself online, sorted, cut at PARLEY_PRESENCE_LIST_MAX
with ``online_count`` saying how many there are.
"""

from __future__ import annotations

from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

from chat.presence import online_fields_with

NAMES = st.text(alphabet="abcdefgh", min_size=1, max_size=3)


@given(online=st.sets(NAMES, max_size=40), name=NAMES, limit=st.integers(1, 12))
def test_the_joiner_is_in_the_list_it_is_sorted_and_cut_with_a_count(
    online: set[str], name: str, limit: int
) -> None:
    everyone = sorted(online | {name})

    with override_settings(PARLEY_PRESENCE_LIST_MAX=limit):
        fields = online_fields_with(sorted(online), name)

    assert fields["online"] == everyone[:limit]
    if len(everyone) > limit:
        assert fields["online_count"] == len(everyone)
    else:
        assert "online_count" not in fields


def test_the_shared_list_is_not_changed_by_a_join(settings) -> None:
    settings.PARLEY_PRESENCE_LIST_MAX = 3
    shared = ["ann", "cat"]

    assert online_fields_with(shared, "bob") == {"online": ["ann", "bob", "cat"]}
    assert shared == ["ann", "cat"]
