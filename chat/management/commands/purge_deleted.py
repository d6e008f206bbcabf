from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from chat.lifecycle import deleted_purge


class Command(BaseCommand):
    help = (
        "Erase the text (and edit history) of messages deleted more than "
        "PARLEY_DELETED_RETENTION_DAYS ago; their tombstones stay. Run it daily (cron)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        erased = deleted_purge()
        days = settings.PARLEY_DELETED_RETENTION_DAYS
        self.stdout.write(f"Erased the text of {erased} message(s) deleted over {days:g} days ago")
