from django.apps import AppConfig


class VoiceConfig(AppConfig):
    """Speech for rooms: replies spoken as they stream (docs/protocol.md "Audio frames"),
    members speaking to a room, barge-in and what was heard. It plugs into chat through
    chat's seams (the reply observer, the control actions, the transports' extensions);
    chat never imports it."""

    name = "voice"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from voice import reply_speech, storage, transport

        reply_speech.install()
        transport.install()
        storage.install()
