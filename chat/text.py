"""The one rule for text that comes from outside (docs/protocol.md, "Text").

Every string a client gives us to store or look up passes ``clean_text`` first, whatever
the transport (WebSocket frame, HTTP body) and whatever the field (message text,
``client_id``, a room's ``name`` and ``system_prompt``, a ``username``). A value it refuses
is a ``bad_request`` (or ``too_long``) that names the field, never a database error:

- NUL (U+0000): PostgreSQL cannot store it in a text column ("A string literal cannot
  contain NUL characters"), so it is refused everywhere, not only on PostgreSQL, and the
  same request means the same thing on every database.
- Lone surrogates (U+D800..U+DFFF), which JSON's ``\\ud800`` escape can carry: they are not
  text and cannot be encoded as UTF-8, so neither SQLite nor PostgreSQL can store them.
- Single-line fields (names, ids) refuse every control character, line breaks included.
- A value made only of invisible characters (spaces, zero-width spaces, joiners, other
  format characters, fillers) is empty: it would show as a blank message.

URL slugs are checked by ``chat.selectors.room_get`` (a slug that cannot exist is simply no
such room), so the rule here is for values, that one for names in paths.
"""

from __future__ import annotations

import unicodedata

from chat.errors import BadRequest, ParleyError

# Unicode categories that draw nothing on their own: controls, format characters (zero
# width space U+200B, joiners, U+FEFF, soft hyphen, bidi marks, tags) and separators.
_BLANK_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# Letters that render as blank space (Hangul fillers, the braille blank) and the variation
# selectors, which only modify a preceding character: common ways to post "nothing".
_BLANK_CHARACTERS = frozenset(
    "\u115f\u1160\u3164\uffa0\u2800"
    + "".join(chr(c) for c in range(0xFE00, 0xFE10))
    + "".join(chr(c) for c in range(0xE0100, 0xE01F0))
)


def _visible(char: str) -> bool:
    return char not in _BLANK_CHARACTERS and unicodedata.category(char) not in _BLANK_CATEGORIES


def is_blank(value: str) -> bool:
    """True when ``value`` would show as nothing (only whitespace and invisible characters)."""
    return not any(_visible(char) for char in value)


def clean_text(
    value: object,
    *,
    field: str,
    max_chars: int,
    required: bool = True,
    single_line: bool = False,
    strip: bool = False,
    too_long: type[ParleyError] = BadRequest,
) -> str:
    """``value`` if it is text Parley can store and show; otherwise a ParleyError.

    ``required``: a blank value (see ``is_blank``) is refused; otherwise it is allowed.
    ``strip``: surrounding whitespace is removed before the checks (names).
    ``too_long``: the error for a value over ``max_chars`` (messages answer ``too_long``).
    """
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    if "\x00" in value:
        raise BadRequest(f"{field} must not contain NUL (U+0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{field} is not valid Unicode: it has a lone surrogate") from None
    if single_line and any(unicodedata.category(char) == "Cc" for char in value):
        raise BadRequest(f"{field} must not contain control characters or line breaks")
    if strip:
        value = value.strip()
    if required and is_blank(value):
        raise BadRequest(f"{field} must not be empty")
    if len(value) > max_chars:
        raise too_long(f"{field} is over {max_chars} characters")
    return value
