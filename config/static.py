"""Static files: hashed names from ``collectstatic``, served by daphne with long caching.

``collectstatic`` (make run, the Dockerfile, the test session) copies every app's static
files into ``STATIC_ROOT`` under names that carry a hash of their content, and rewrites
the CSS ``url()``s and the ES modules' relative imports to those names (Django's
ManifestStaticFilesStorage). A hashed name never changes content, so it is served as
``immutable`` for a year; a release is a new name, never a stale cache.

WhiteNoise would do this serving, but it is a WSGI app (its ASGI support is an open pull
request), so under daphne it would run in a thread per request. Django's own handler,
which config/asgi.py already wrapped the app in, serves from the apps' folders; this
subclass serves ``STATIC_ROOT`` instead, with the cache header, and keeps the apps'
folders while DEBUG so an edited file shows on reload.
"""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.contrib.staticfiles.storage import ManifestStaticFilesStorage, staticfiles_storage
from django.http import FileResponse, HttpRequest
from django.views import static

# A year: the longest max-age caches honour, for content that cannot change under its name.
IMMUTABLE = "public, max-age=31536000, immutable"
# A file under its plain name (what a hashed name points to may change with a release).
REVALIDATE = "no-cache"


class StaticStorage(ManifestStaticFilesStorage):
    # Rewrite ``import ... from "./api.js"`` to the hashed name as well (Django 4.2+; off
    # by default in Django because it needs a trailing ";" on each import, as ours have).
    support_js_module_import_aggregation = True


@cache
def _hashed_names() -> frozenset[str]:
    hashed = getattr(staticfiles_storage, "hashed_files", {})
    return frozenset(hashed.values())


class StaticFilesHandler(ASGIStaticFilesHandler):
    """``/static/`` from collectstatic's output, the rest to the app."""

    def serve(self, request: HttpRequest) -> FileResponse:
        if settings.DEBUG:
            return super().serve(request)
        path = self.file_path(request.path)
        response: FileResponse = static.serve(request, path, document_root=settings.STATIC_ROOT)
        response["Cache-Control"] = IMMUTABLE if path in _hashed_names() else REVALIDATE
        return response
