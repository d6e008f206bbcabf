"""Model providers: where an assistant's model runs, and which models each one offers.

A provider is a model server: the bundled local model, or any OpenAI-compatible base URL
with its key. There are three sources, read in this order (a later one never replaces a
name an earlier one has):

- ``default``, from the environment as before (``LLM_BACKEND``, ``OPENAI_BASE_URL``,
  ``OPENAI_API_KEY``, ``LLM_MODEL``): an existing deployment changes nothing;
- ``PARLEY_PROVIDERS``, JSON in the environment (``{"<name>": {"base_url", "api_key"}}``):
  for operators who deploy by configuration and keep keys in their secret store;
- ``Provider`` rows, added by staff in the admin: for adding a key without a redeploy.

Both ways are kept because both kinds of operator exist; the environment wins a name
clash, because it is what the deployment says.

An API key stays on the server: ``ProviderConfig`` does not show it in its repr, errors
name the server by scheme, host and port only (``core.upstream.server_of``), and nothing
serializes a config.

Models are discovered: a provider's ``GET /v1/models`` is read and kept for
``PARLEY_MODELS_TTL`` seconds (a failure for a few seconds only, so a server that comes
back is seen soon), and the bundled provider lists its one model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import httpx
from django.conf import settings

from chat.errors import BadRequest
from chat.llm import ChatMessage, LLMBackend, LLMError, Options, Usage, get_backend
from core.upstream import (
    LoopClient,
    http_base_url,
    read_capped,
    server_of,
    status_failure,
    transport_failure,
)

if TYPE_CHECKING:
    from chat.models import Provider

logger = logging.getLogger(__name__)

DEFAULT = "default"
# A failed discovery is kept this long, so a page that asks twice does not wait twice.
_ERROR_TTL = 5.0
_MAX_MODELS_BODY = 1024 * 1024
_MAX_MODELS = 500


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    # "missing": an assistant's provider that is no longer configured (removed from the
    # environment or the admin): its replies fail with a reason, never go elsewhere.
    kind: Literal["local", "openai", "missing"]
    base_url: str = ""
    api_key: str = field(default="", repr=False)

    @property
    def server(self) -> str:
        """Where it is, for people: never the key."""
        if self.kind == "missing":
            return f"the provider {self.name!r}, which is no longer configured"
        return "the bundled model" if self.kind == "local" else server_of(self.base_url)


class ProviderError(Exception):
    """A provider could not be asked: its reason is safe to show (no key in it)."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(reason)
        self.provider = provider
        self.reason = reason


def _default() -> ProviderConfig:
    if settings.LLM_BACKEND == "local":
        return ProviderConfig(DEFAULT, "local")
    return ProviderConfig(
        DEFAULT,
        "openai",
        base_url=settings.OPENAI_BASE_URL or "https://api.openai.com/v1",
        api_key=settings.OPENAI_API_KEY,
    )


def _from_environment() -> dict[str, ProviderConfig]:
    raw = settings.PARLEY_PROVIDERS
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"PARLEY_PROVIDERS is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError('PARLEY_PROVIDERS must be {"<name>": {"base_url": ..., "api_key": ...}}')
    found = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("base_url"), str):
            raise ValueError(f"PARLEY_PROVIDERS[{name!r}] needs a base_url")
        key = entry.get("api_key") or ""
        if not isinstance(key, str):
            raise ValueError(f"PARLEY_PROVIDERS[{name!r}].api_key must be a string")
        url = http_base_url(entry["base_url"], setting=f"PARLEY_PROVIDERS[{name!r}].base_url")
        found[str(name)] = ProviderConfig(str(name), "openai", base_url=url, api_key=key)
    return found


def check_settings() -> None:
    """Raise ValueError for a PARLEY_PROVIDERS the server cannot use (at start-up)."""
    _from_environment()


def providers() -> dict[str, ProviderConfig]:
    """Every provider by name: default, then the environment's, then the admin's. Reads
    the database (a few rows): call it from a worker thread."""
    from chat.models import Provider

    found = {DEFAULT: _default()}
    for name, config in _from_environment().items():
        found.setdefault(name, config)
    for row in Provider.objects.all():
        found.setdefault(row.name, _from_row(row))
    return found


def provider_or_none(name: str) -> ProviderConfig | None:
    """The provider ``name`` as ``providers()`` has it, or None. Reads the database only
    for a name neither default nor the environment's (one row): call it from a worker
    thread."""
    from chat.models import Provider

    if name == DEFAULT:
        return _default()
    found = _from_environment().get(name)
    if found is not None:
        return found
    try:
        return _from_row(Provider.objects.get(name=name))
    except Provider.DoesNotExist:
        return None


def _from_row(row: Provider) -> ProviderConfig:
    return ProviderConfig(row.name, "openai", base_url=row.base_url, api_key=row.api_key)


def provider(name: str) -> ProviderConfig:
    """One provider by name; ``BadRequest`` naming it when there is none."""
    found = provider_or_none(name)
    if found is None:
        raise BadRequest(f"there is no provider named {name!r}")
    return found


def default_model(config: ProviderConfig) -> str:
    """The model an assistant on ``config`` with no model of its own uses."""
    return settings.LLM_MODEL if config.name == DEFAULT else ""


def split_model(value: object) -> tuple[str, str]:
    """``"<provider>/<model id>"`` as (provider, model id); model ids may hold slashes."""
    if not isinstance(value, str) or "/" not in value:
        raise BadRequest('model must be "<provider>/<model id>", as GET /api/models lists')
    name, _, model = value.partition("/")
    if not name or not model:
        raise BadRequest('model must be "<provider>/<model id>", as GET /api/models lists')
    return name, model


# --- Backends -----------------------------------------------------------------------------

# One backend per provider (its connection pool is shared by every assistant on it); an
# assistant's model and sampling go with each reply (chat.llm.Options). Keyed by the whole
# config, so a key changed in the admin takes effect for the next reply.
_backends: dict[ProviderConfig, LLMBackend] = {}


class _Missing(LLMBackend):
    """The backend of a provider that is gone: each reply fails and says so. An assistant's
    conversation is never sent to another server than the one its owner picked."""

    name: ClassVar[str] = "missing"

    async def stream(
        self, messages: Sequence[ChatMessage], usage: Usage, options: Options | None = None
    ) -> AsyncGenerator[str, None]:
        raise LLMError(
            "unavailable",
            f"The provider {self.model!r} is no longer configured: the room's owner can "
            "pick another model for this assistant.",
        )
        yield ""  # pragma: no cover - makes this an async generator


def backend_for(config: ProviderConfig) -> LLMBackend:
    if config.kind == "missing":
        return _Missing(model=config.name)
    if config.name == DEFAULT:
        return get_backend()
    backend = _backends.get(config)
    if backend is None:
        from chat.llm.openai import OpenAIBackend

        for stale in [c for c in _backends if c.name == config.name]:
            del _backends[stale]  # its key or URL changed: a new client
        backend = _backends[config] = OpenAIBackend(
            base_url=config.base_url,
            api_key=config.api_key,
            model=default_model(config),
            connect_timeout=settings.LLM_CONNECT_TIMEOUT,
            read_timeout=settings.LLM_READ_TIMEOUT,
            max_tokens=settings.LLM_MAX_TOKENS,
            temperature=settings.LLM_TEMPERATURE,
        )
    return backend


# --- Discovery ----------------------------------------------------------------------------

_models: dict[ProviderConfig, tuple[float, list[str] | ProviderError]] = {}
_http = LoopClient(
    headers={"Accept": "application/json"},
    api_key=None,  # each provider's key goes with its own request
    connect_timeout=5.0,
    read_timeout=10.0,
    max_keepalive=4,
)


async def list_models(config: ProviderConfig) -> list[str]:
    """The model ids ``config`` offers (cached); ``ProviderError`` when it cannot say."""
    if config.kind == "local":
        return [settings.LLM_MODEL]
    if config.kind == "missing":
        raise ProviderError(config.name, f"There is no provider named {config.name!r}.")
    now = time.monotonic()
    cached = _models.get(config)
    if cached is not None and cached[0] > now:
        if isinstance(cached[1], ProviderError):
            raise cached[1]
        return cached[1]
    try:
        found: list[str] | ProviderError = await _fetch_models(config)
    except ProviderError as exc:
        found = exc
    ttl = _ERROR_TTL if isinstance(found, ProviderError) else settings.PARLEY_MODELS_TTL
    _models[config] = (now + ttl, found)
    if isinstance(found, ProviderError):
        raise found
    return found


async def _fetch_models(config: ProviderConfig) -> list[str]:
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    url = f"{config.base_url}/models"
    try:
        async with _http.get().stream("GET", url, headers=headers) as resp:
            if not resp.is_success:
                reason = await status_failure(
                    resp, service="model server", limit=64 * 1024, auth_hint="check its key"
                )
                raise ProviderError(config.name, reason)
            body = await read_capped(resp, _MAX_MODELS_BODY)
    except httpx.HTTPError as exc:
        _, reason = transport_failure(
            exc,
            service="model server",
            product="model list",
            server=config.server,
            connect_timeout=5.0,
            read_timeout=10.0,
        )
        raise ProviderError(config.name, reason) from None
    try:
        data = json.loads(body)["data"]
        ids = [str(m["id"]) for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (ValueError, KeyError, TypeError):
        raise ProviderError(
            config.name, f"The model server at {config.server} did not list its models."
        ) from None
    return sorted(set(ids))[:_MAX_MODELS]


async def all_models(
    configs: dict[str, ProviderConfig],
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Every provider's models, asked at once: (models, errors), as ``GET /api/models``
    answers them. An unreachable provider is an error beside the others' models."""
    names = list(configs)
    results = await asyncio.gather(
        *(list_models(configs[n]) for n in names), return_exceptions=True
    )
    models, errors = [], []
    for name, result in zip(names, results, strict=True):
        if isinstance(result, ProviderError):
            errors.append({"provider": name, "error": result.reason})
        elif isinstance(result, BaseException):
            raise result
        else:
            models += [{"id": f"{name}/{m}", "provider": name, "model": m} for m in result]
    return models, errors


def forget_models() -> None:
    """Drop the discovery cache (tests; the admin after a provider changes)."""
    _models.clear()
