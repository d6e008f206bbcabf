from django.apps import AppConfig


class VoiceConfig(AppConfig):
    """Text-to-speech for replies (PROTOCOL.md section 6). Engines arrive in a later step."""

    name = "voice"
    default_auto_field = "django.db.models.BigAutoField"
