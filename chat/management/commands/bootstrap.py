from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from chat.services import AdminPassword, bootstrap_ensure

RESET_HINT = "DJANGO_SUPERUSER_PASSWORD=<new password> make run"


class Command(BaseCommand):
    help = "Ensure the superuser 'admin' and the public room 'Lobby' exist (used by make run)."

    def handle(self, *args: Any, **options: Any) -> None:
        done = bootstrap_ensure(admin_password=os.environ.get("DJANGO_SUPERUSER_PASSWORD") or None)
        if done.password is AdminPassword.GENERATED:
            self.stdout.write(
                self.style.WARNING(
                    f"Created superuser 'admin' with password: {done.generated}  (shown once;"
                    f" to change it later: {RESET_HINT})"
                )
            )
        elif done.password is AdminPassword.FROM_ENV:
            self.stdout.write("Superuser 'admin' has the password from DJANGO_SUPERUSER_PASSWORD")
        else:
            # The password was printed once, on the first run; it cannot be shown again.
            self.stdout.write(
                "Superuser 'admin' exists; its password was shown on the first run."
                f" Forgot it? Set a new one: {RESET_HINT}"
            )
        self.stdout.write(f"Room '{done.lobby.name}' is ready at /rooms/{done.lobby.slug}/")
