"""Where voice keeps audio per message on disk, and its erasure with the message.

Two kinds of file, each named ``<message id>.wav``:

- a reply's whole audio, made once by ``GET /api/messages/<id>/audio`` and kept in
  ``VOICE_CACHE_DIR`` (voice/views.py);
- a member's spoken message as it was recorded, only when ``PARLEY_SPEECH_AUDIO_DIR``
  names a folder (voice/conversation.py).

Deleting a message removes its reply audio at once (members can no longer fetch it, and
it is a copy of a text that only staff may still read); ``purge_deleted`` removes both,
with the text, after ``PARLEY_DELETED_RETENTION_DAYS``. Registered with chat's
``STORED`` hooks (chat/extensions.py) by ``install()``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings

from chat.extensions import STORED

logger = logging.getLogger(__name__)


def reply_audio_path(message_id: int) -> Path:
    return Path(settings.VOICE_CACHE_DIR) / f"{int(message_id)}.wav"


def speech_audio_path(message_id: int) -> Path | None:
    """Where a spoken message's recording is kept; None when recordings are not kept."""
    folder = settings.PARLEY_SPEECH_AUDIO_DIR
    return Path(folder) / f"{int(message_id)}.wav" if folder else None


def reply_audio_erase(message_ids: Sequence[int]) -> None:
    for pk in message_ids:
        _unlink(reply_audio_path(pk))


def message_audio_erase(message_ids: Sequence[int]) -> None:
    """Every audio file kept of these messages."""
    for pk in message_ids:
        _unlink(reply_audio_path(pk))
        speech = speech_audio_path(pk)
        if speech is not None:
            _unlink(speech)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        # The database change stands; the operator sees which file is left.
        logger.warning("could not remove %s: %s", path, exc)


def install() -> None:
    if reply_audio_erase not in STORED.deleted:
        STORED.deleted.append(reply_audio_erase)
    if message_audio_erase not in STORED.purged:
        STORED.purged.append(message_audio_erase)
