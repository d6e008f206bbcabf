from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import api_token_create


class Command(BaseCommand):
    help = "Create an API token for USERNAME. The last line of output is the token alone."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to tell tokens apart")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        token, raw = api_token_create(user=user, name=options["name"])
        self.stdout.write(
            f"Token {token.prefix}… created for {user.get_username()}; "
            "it is shown once, store it now:"
        )
        self.stdout.write(raw)
