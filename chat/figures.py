"""Figures of replies for reviewers: per assistant and per model, how many, how fast to
start (median time to first token), how fast they wrote (tokens per second), and how
they ended (stop reasons). The admin's reply list shows them for its current filter.

One query, whatever the number of replies: the rows' few timing columns are read once
and grouped here. A median needs every value of a group (and SQLite has no percentile
function), so the newest ``FIGURES_ROWS_MAX`` replies of the filter are read, and the
figures say when there were more.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import QuerySet

from chat.models import Generation

# Replies read for the figures at most: a page that stays quick (a few MB of rows) on a
# table of millions; a reviewer narrows the filter for older ones.
FIGURES_ROWS_MAX = 20_000
# How a provider is named on a reply whose record predates providers.
DEFAULT_PROVIDER = "default"


@dataclass
class Figures:
    """One group's figures: ``tokens_per_second`` is its tokens over its streaming time
    (pauses left out), so long replies weigh as much as they took."""

    label: str
    count: int = 0
    ttfts_ms: list[float] = field(default_factory=list, repr=False)
    tokens: int = 0
    streamed_s: float = 0.0
    endings: Counter[str] = field(default_factory=Counter)

    @property
    def median_ttft_ms(self) -> float | None:
        return round(statistics.median(self.ttfts_ms), 1) if self.ttfts_ms else None

    @property
    def tokens_per_second(self) -> float | None:
        return round(self.tokens / self.streamed_s, 1) if self.streamed_s > 0 else None

    @property
    def endings_text(self) -> str:
        return " · ".join(f"{reason} {n}" for reason, n in self.endings.most_common())


@dataclass
class ReplyFigures:
    by_assistant: list[Figures]
    by_model: list[Figures]
    rows: int  # replies the figures are over
    capped: bool  # the filter had more than FIGURES_ROWS_MAX (the newest were read)


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (later - earlier).total_seconds()


def reply_figures(queryset: QuerySet[Generation], *, limit: int = FIGURES_ROWS_MAX) -> ReplyFigures:
    """The figures of the replies in ``queryset`` (one query)."""
    rows = list(
        queryset.order_by("-queued_at").values_list(
            "assistant_id",
            "handle",
            "assistant_name",
            "provider",
            "model",
            "started_at",
            "first_token_at",
            "ended_at",
            "paused_seconds",
            "completion_tokens",
            "stop_reason",
            "message__status",
        )[: limit + 1]
    )
    capped = len(rows) > limit
    rows = rows[:limit]
    assistants: dict[object, Figures] = {}
    models: dict[str, Figures] = {}
    for (
        assistant_id,
        handle,
        name,
        provider,
        model,
        started,
        first_token,
        ended,
        paused,
        tokens,
        stop_reason,
        status,
    ) in rows:
        handle = handle or "assistant"
        who = f"{name or 'Assistant'} (@{handle})"
        model_id = f"{provider or DEFAULT_PROVIDER}/{model or '?'}"
        ttft = _seconds(first_token, started)
        streamed = _seconds(ended, started)
        ending = stop_reason or status
        for group in (
            assistants.setdefault(assistant_id or who, Figures(who)),
            models.setdefault(model_id, Figures(model_id)),
        ):
            group.count += 1
            if ttft is not None:
                group.ttfts_ms.append(ttft * 1000)
            if streamed is not None and tokens:
                group.tokens += tokens
                group.streamed_s += max(streamed - (paused or 0.0), 0.0)
            group.endings[ending] += 1

    def ordered(groups: dict[object, Figures] | dict[str, Figures]) -> list[Figures]:
        return sorted(groups.values(), key=lambda g: (-g.count, g.label))

    return ReplyFigures(ordered(assistants), ordered(models), len(rows), capped)
