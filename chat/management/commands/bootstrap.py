from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from chat.services import bootstrap_ensure


class Command(BaseCommand):
    help = "Ensure the superuser 'admin' and the public room 'Lobby' exist (used by make run)."

    def handle(self, *args: Any, **options: Any) -> None:
        generated, lobby = bootstrap_ensure(
            admin_password=os.environ.get("DJANGO_SUPERUSER_PASSWORD") or None
        )
        if generated:
            self.stdout.write(
                self.style.WARNING(
                    f"Created superuser 'admin' with password: {generated}  (shown once)"
                )
            )
        self.stdout.write(f"Room '{lobby.name}' is ready at /rooms/{lobby.slug}/")
