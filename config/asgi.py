"""ASGI entry point: ``daphne config.asgi:application``.

HTTP goes to Django; WebSocket to Channels, behind the origin check and the shared
authentication stack (session cookie or bearer token).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from accounts.auth import AllowedHostsOriginValidator, AuthStack  # noqa: E402
from chat import llm  # noqa: E402
from chat.replies.manager import start_with_server  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from config.static import StaticFilesHandler  # noqa: E402
from core import checks, fastpath, metrics, tracing  # noqa: E402
from voice import registry as voice_registry  # noqa: E402
from voice import stt  # noqa: E402

# A misdeployment that would fail every request fails the start instead, saying what to run.
checks.run_startup_checks()
fastpath.install(settings.PARLEY_WS_MAX_BUFFER)
# PARLEY_METRICS=off: every instrumentation call a no-op (core/metrics.py).
metrics.configure(enabled=settings.PARLEY_METRICS)
tracing.install()
llm.preload()
voice_registry.preload()
stt.preload()
# The reply manager (heartbeat, orphan sweep) starts with the process, not with its first
# connection: daphne has no ASGI lifespan (chat/replies/manager.py).
start_with_server()

application = ProtocolTypeRouter(
    {
        # /static/: collectstatic's hashed files, cached for good (config/static.py).
        "http": StaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthStack(URLRouter(websocket_urlpatterns))),
    }
)
