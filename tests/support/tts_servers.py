"""The speech fakes' old home: the names of ``tests/support/tts/``, for existing imports.

New tests import from the vendor's module (``tests.support.tts.openai``, ``.volcano``,
``.qwen``) and the shared bits from ``tests.support.tts.common``.
"""

from tests.support.tts.common import pcm_rms, tone, wav_header
from tests.support.tts.openai import (
    PCM_SAMPLE_RATE,
    FakeSpeechServer,
    SpeechRequest,
    SpeechScenario,
)
from tests.support.tts.volcano import (
    CANCEL_SESSION,
    FINISH_SESSION,
    SESSION_CANCELED,
    SESSION_FINISHED,
    START_CONNECTION,
    START_SESSION,
    TASK_REQUEST,
    TTS_RESPONSE,
    FakeVolcanoServer,
    VolcanoConnection,
    VolcanoFrame,
    VolcanoScenario,
)

__all__ = [
    "CANCEL_SESSION",
    "FINISH_SESSION",
    "PCM_SAMPLE_RATE",
    "SESSION_CANCELED",
    "SESSION_FINISHED",
    "START_CONNECTION",
    "START_SESSION",
    "TASK_REQUEST",
    "TTS_RESPONSE",
    "FakeSpeechServer",
    "FakeVolcanoServer",
    "SpeechRequest",
    "SpeechScenario",
    "VolcanoConnection",
    "VolcanoFrame",
    "VolcanoScenario",
    "pcm_rms",
    "tone",
    "wav_header",
]
