"""Start-up checks: what would otherwise fail on every request is refused at start.

``static_manifest``: with the hashed static storage (``DEBUG`` off), every page names its
CSS and JS through ``collectstatic``'s manifest; without one, each page is a 500 (the
admin login too). A deployment check, so ``migrate`` (which ``make run`` runs before
``collectstatic``) does not trip on it; ``manage.py check --deploy`` reports it, and
config/asgi.py runs it before daphne serves anything (``run_startup_checks``).

``tracing_installed``: ``PARLEY_TRACING=on`` without the OpenTelemetry SDK (or without the
exporter ``OTEL_TRACES_EXPORTER`` names) would trace nothing, or fail every reply; it is
refused at start with what to install instead.
"""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.management.base import SystemCheckError

TAG = "parley_startup"

NO_MANIFEST = "parley.E001"
NO_OPENTELEMETRY = "parley.E002"
NO_EXPORTER = "parley.E003"


def static_manifest(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.conf import settings
    from django.contrib.staticfiles.storage import ManifestFilesMixin
    from django.core.files.storage import storages

    storage = storages["staticfiles"]
    if not isinstance(storage, ManifestFilesMixin):
        return []
    if storage.exists(storage.manifest_name):
        return []
    return [
        checks.Error(
            f"No static files manifest in {settings.STATIC_ROOT}: every page would fail "
            "with a 500.",
            hint="Run `python manage.py collectstatic --noinput` before starting the server "
            "(make run and the Dockerfile do).",
            id=NO_MANIFEST,
        )
    ]


def tracing_installed(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``PARLEY_TRACING=on`` needs the ``otel`` extra, and an exporter package for each
    exporter ``OTEL_TRACES_EXPORTER`` names. Off, nothing is looked at (nor imported)."""
    from django.conf import settings

    if not settings.PARLEY_TRACING:
        return []
    from core.tracing import INSTALL_HINT

    try:
        from core.otel import missing_exporters
    except ImportError as exc:
        return [
            checks.Error(
                f"PARLEY_TRACING is on but OpenTelemetry is not installed ({exc}).",
                hint=INSTALL_HINT,
                id=NO_OPENTELEMETRY,
            )
        ]
    missing = missing_exporters()
    if missing:
        return [
            checks.Error(
                f"PARLEY_TRACING is on but no installed package provides the trace "
                f"exporter(s) OTEL_TRACES_EXPORTER names: {', '.join(missing)}.",
                hint="Install one (pip install opentelemetry-exporter-otlp-proto-http for "
                "otlp), or set OTEL_TRACES_EXPORTER to one that is (console, none).",
                id=NO_EXPORTER,
            )
        ]
    return []


def register() -> None:
    checks.register(static_manifest, TAG, deploy=True)
    checks.register(tracing_installed, TAG)


def run_startup_checks() -> None:
    """Raise ``SystemCheckError`` (the message says what to run) on a start-up error."""
    errors = [
        e
        for e in checks.run_checks(tags=[TAG], include_deployment_checks=True)
        if e.level >= checks.ERROR
    ]
    if errors:
        raise SystemCheckError("\n".join(f"{e.id}: {e.msg}\n\tHINT: {e.hint}" for e in errors))
