from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core import checks

        checks.register()  # a daphne without collectstatic refuses to start (core/checks.py)
