"""Cut streamed reply text into speakable pieces, and clean them for a speech engine.

A reply arrives as a stream of small text deltas (Markdown, English or Chinese). The
``streaming`` voice mode speaks each sentence as soon as it is complete; the ``realtime``
mode with an engine that cannot take streamed text speaks each clause. Both need to know,
with as little text as possible after the cut, where a sentence (or clause) ends:

- Sentence ends are ``. ! ? ;`` and ``。 ！ ？ ；`` (with any closing quotes, brackets and
  Markdown emphasis right after them), and every line break: LLM replies put paragraphs,
  list items and headings on lines of their own.
- A Latin end mark only ends a sentence when whitespace (or a CJK character) follows it,
  so ``3.14``, ``example.com`` and ``e.g.,`` never cut. Titles (``Mr.``, ``Dr.``), ``e.g.``,
  ``i.e.``, ``vs.`` and single-letter initials (``J. R. R. Tolkien``) never end a sentence;
  initialisms and short forms that may (``U.S.``, ``a.m.``, ``etc.``, ``Inc.``) end one only
  when the next word starts with a capital letter; a numbered list marker (``1.`` at the
  start of a line) does not. ``U.S. Army`` is therefore cut; no rule short of a dictionary
  tells it from ``in the U.S. Then``.
- An ellipsis (``...``, ``…``, ``……``) ends a sentence only when a capitalised word follows;
  ``Well... maybe`` and ``嗯……我想想`` stay whole.
- Fenced code blocks are never cut inside: a whole block is one piece (which
  :func:`clean_for_speech` then drops).
- The first piece may be cut early at a comma (``,`` ``，`` ``、``) once it is at least
  ``first_cut_chars`` long, so the first audio of a long opening sentence comes sooner.
- In clause mode every comma cuts, for engines fed clause by clause in realtime mode.
- A piece that reaches ``max_chars`` without a cut is cut at its last space or comma
  (anywhere, for text without spaces): a speech engine takes one piece in one call, and
  an unpunctuated run should not hold back all the audio.

The segmenter returns the pieces as they were written (stripped of surrounding
whitespace); callers pass each through :func:`clean_for_speech` and skip empty results.
:class:`SpeechTextStream` is the word-level counterpart for engines that take the text
itself as a stream (a bidirectional engine does its own sentence splitting).
"""

from __future__ import annotations

import re
from typing import Final

# Marks that end a sentence. Latin ones need whitespace (or CJK) after them; CJK ones not.
_LATIN_ENDS: Final = frozenset(".!?;")
_CJK_ENDS: Final = frozenset("。！？；")
_ELLIPSIS: Final = "…"
_END_RUN: Final = frozenset(".!?;。！？；…")
_LATIN_COMMA: Final = ","
_CJK_COMMAS: Final = frozenset("，、")
# What may close a sentence after its end mark: quotes, brackets, Markdown emphasis.
_CLOSERS: Final = frozenset("\"'”’)]}」』》）】〕*_~")
_FENCES: Final = ("```", "~~~")

# Never the end of a sentence: they precede a name or continue the sentence.
_NEVER_ENDS: Final = frozenset(
    {
        "mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "mt", "rev", "hon", "gen",
        "col", "lt", "sgt", "capt", "cmdr", "gov", "sen", "rep", "pres", "messrs", "mme",
        "mlle", "e.g", "i.e", "vs", "cf", "viz",
    }
)  # fmt: skip
# Short forms that end a sentence when the next word is capitalised, and not otherwise.
_MAYBE_ENDS: Final = frozenset(
    {
        "etc", "al", "inc", "ltd", "co", "corp", "approx", "fig", "figs", "eq", "vol",
        "no", "nos", "p", "pp", "ch", "sec", "dept", "est", "min", "max", "jan", "feb",
        "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    }
)  # fmt: skip
#: The early first cut: about 40 characters is 2-3 s of speech, a phrase worth hearing on
#: its own, and the model writes it in well under a second, so the first audio starts
#: while the rest of a long first sentence is still being written.
DEFAULT_FIRST_CUT_CHARS: Final = 40
#: The longest piece: about 20 s of speech in one engine call. A longer unpunctuated run
#: would hold back all its audio until it ends (and cost Piper one long ONNX run).
DEFAULT_MAX_CHARS: Final = 300

_WORD_BEFORE_DOT: Final = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_INITIALISM: Final = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")


def _is_cjk(char: str) -> bool:
    """CJK ideographs, kana, Hangul and their punctuation: scripts written without spaces."""
    code = ord(char)
    return (
        0x2E80 <= code <= 0x9FFF
        or 0xAC00 <= code <= 0xD7AF
        or 0xF900 <= code <= 0xFAFF
        or 0xFF00 <= code <= 0xFFEF
        or 0x20000 <= code <= 0x3FFFF
    )


class SentenceSegmenter:
    """Incremental sentence (or clause) segmenter for streamed text.

    ``feed(text)`` returns the pieces that ``text`` completed, in order; ``flush()``
    returns whatever is left when the stream ends. A piece is returned as soon as the
    text after it proves the cut (one character for most marks; up to the next word for
    ``etc.``-like short forms and ellipses).
    """

    def __init__(
        self,
        *,
        first_cut_chars: int | None = DEFAULT_FIRST_CUT_CHARS,
        clause_mode: bool = False,
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> None:
        if first_cut_chars is not None and first_cut_chars < 1:
            raise ValueError("first_cut_chars must be positive or None")
        if max_chars < 20:
            raise ValueError("max_chars must be at least 20")
        self.first_cut_chars = first_cut_chars
        self.clause_mode = clause_mode
        self.max_chars = max_chars
        self._buf = ""
        # Where the current piece starts, and the next index to look at.
        self._start = 0
        self._pos = 0
        # Whether index 0 of the buffer starts a line (the buffer is trimmed as it goes).
        self._base_line_start = True
        self._emitted = 0

    def feed(self, text: str) -> list[str]:
        self._buf += text
        return self._scan(final=False)

    def flush(self) -> list[str]:
        pieces = self._scan(final=True)
        rest = self._buf[self._start :].strip()
        if rest:
            pieces.append(rest)
        self._buf, self._start, self._pos = "", 0, 0
        self._base_line_start, self._emitted = True, 0
        return pieces

    # -- scanning ------------------------------------------------------------------------

    def _scan(self, *, final: bool) -> list[str]:
        pieces: list[str] = []
        buf = self._buf
        i = self._pos
        while i < len(buf):
            if self._at_line_start(i):
                fence = self._fence_at(i, final)
                if fence is None:
                    break  # not enough of the line yet to tell
                if fence:
                    end = self._fence_end(i, fence, final)
                    if end is None:
                        break  # the block is still open: wait for its closing fence
                    self._cut(i, pieces)
                    self._cut(end, pieces)
                    i = end
                    continue
            cut = self._boundary(i, final)
            if cut is None:
                break
            if cut:
                self._cut(cut, pieces)
                i = cut
                continue
            i += 1
            if i - self._start >= self.max_chars:
                self._cut(self._forced_cut(i), pieces)
                i = max(i, self._start)
        self._pos = i
        if self._start:
            self._base_line_start = self._buf[self._start - 1] == "\n"
            self._buf = self._buf[self._start :]
            self._pos -= self._start
            self._start = 0
        return pieces

    def _cut(self, at: int, pieces: list[str]) -> None:
        piece = self._buf[self._start : at].strip()
        self._start = at
        if piece:
            pieces.append(piece)
            self._emitted += 1

    def _at_line_start(self, i: int) -> bool:
        return self._buf[i - 1] == "\n" if i else self._base_line_start

    def _fence_at(self, i: int, final: bool) -> str | None:
        """The fence that opens the line at ``i``, "" if none, None if still unknown."""
        line = self._buf[i:]
        stripped = line.lstrip(" ")
        if len(line) - len(stripped) > 3:
            return ""
        if len(stripped) < 3 and not final and "\n" not in stripped:
            head = stripped
            if any(f.startswith(head) for f in _FENCES):
                return None
            return ""
        for fence in _FENCES:
            if stripped.startswith(fence):
                return fence
        return ""

    def _fence_end(self, i: int, fence: str, final: bool) -> int | None:
        """The index after the line that closes the block opened at ``i`` (None: open)."""
        line_end = self._buf.find("\n", i)
        while line_end >= 0:
            start = line_end + 1
            next_end = self._buf.find("\n", start)
            line = self._buf[start : next_end if next_end >= 0 else len(self._buf)]
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                if next_end >= 0:
                    return next_end + 1
                return len(self._buf) if final else None
            line_end = next_end
        return len(self._buf) if final else None

    def _boundary(self, i: int, final: bool) -> int | None:
        """The cut after a mark at ``i`` (0: none here; None: cannot tell yet)."""
        buf = self._buf
        char = buf[i]
        if char == "\n":
            return i + 1
        if char in _END_RUN:
            return self._sentence_end(i, final)
        if char == _LATIN_COMMA or char in _CJK_COMMAS:
            if not self._comma_cuts(i):
                return 0
            if char in _CJK_COMMAS:
                return i + 1
            if i + 1 >= len(buf):
                return i + 1 if final else None
            return i + 1 if buf[i + 1].isspace() or _is_cjk(buf[i + 1]) else 0
        return 0

    def _comma_cuts(self, i: int) -> bool:
        if self.clause_mode:
            return True
        if self._emitted or self.first_cut_chars is None:
            return False
        return len(self._buf[self._start : i + 1].strip()) >= self.first_cut_chars

    def _sentence_end(self, i: int, final: bool) -> int | None:
        buf = self._buf
        if i > self._start and buf[i - 1] in _END_RUN:
            return 0  # inside a run of marks, judged as a whole from its first one
        j = i
        while j < len(buf) and buf[j] in _END_RUN:
            j += 1
        run = buf[i:j]
        k = j
        while k < len(buf) and buf[k] in _CLOSERS:
            k += 1
        if k >= len(buf) and not final:
            return None
        after = buf[k] if k < len(buf) else ""
        if set(run) <= {".", _ELLIPSIS} and (len(run) > 1 or run == _ELLIPSIS):
            # An ellipsis: a pause inside the sentence unless a new sentence starts.
            if not after:
                return k
            if after == "\n":
                return k
            if not after.isspace():
                return 0
            upper = self._next_word_is_capital(k, final)
            return None if upper is None else (k if upper else 0)
        if any(c in _CJK_ENDS for c in run):
            return k
        if after and not (after.isspace() or _is_cjk(after)):
            return 0  # 3.14, example.com, "e.g.,"
        if run != ".":
            return k
        verdict = self._period_ends(i, k, final)
        if verdict is None:
            return None
        return k if verdict else 0

    def _period_ends(self, i: int, k: int, final: bool) -> bool | None:
        """Whether the single ``.`` at ``i`` ends a sentence (None: cannot tell yet)."""
        buf = self._buf
        before = buf[self._start : i]
        match = _WORD_BEFORE_DOT.search(before)
        if match is None:
            token = before.split()[-1] if before.split() else ""
            line = before[before.rfind("\n") + 1 :]
            if token.isdigit() and line.strip() == token:
                return False  # "1." opening a numbered list item
            return True
        word = match.group(1)
        lowered = word.lower()
        start = match.start(1)
        preceded_by_letter = start > 0 and before[start - 1].isalnum()
        if preceded_by_letter:
            return True
        if lowered in _NEVER_ENDS:
            return False
        if len(word) == 1 and word.isupper() and word != "I":
            return False  # an initial: "J. R. R. Tolkien", "John F. Kennedy"
        if lowered in _MAYBE_ENDS or _INITIALISM.fullmatch(word):
            if k >= len(buf):
                return True if final else None
            return self._next_word_is_capital(k, final)
        return True

    def _next_word_is_capital(self, k: int, final: bool) -> bool | None:
        buf = self._buf
        m = k
        while m < len(buf) and buf[m].isspace():
            if buf[m] == "\n":
                return True
            m += 1
        while m < len(buf) and buf[m] in "\"'“‘([*_":
            m += 1
        if m >= len(buf):
            return True if final else None
        return buf[m].isupper() or _is_cjk(buf[m])

    def _forced_cut(self, i: int) -> int:
        """Where to cut a piece that grew to ``max_chars`` without an end mark."""
        piece = self._buf[self._start : i]
        floor = len(piece) // 2
        for marks in (",，、:：", " \t"):
            at = max(piece.rfind(m) for m in marks)
            if at >= floor:
                return self._start + at + 1
        return i


# -- cleaning ----------------------------------------------------------------------------

_FENCED_BLOCK: Final = re.compile(
    r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})[^\n]*\n?.*?(?:^[ \t]{0,3}(?P=fence)[ \t]*$|\Z)",
    re.DOTALL | re.MULTILINE,
)
_INLINE_CODE: Final = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_IMAGE: Final = re.compile(r"!\[([^\]\n]*)\]\([^)\n]*\)")
_LINK: Final = re.compile(r"\[([^\]\n]+)\]\((?:[^()\n]|\([^)\n]*\))*\)")
_REF_LINK: Final = re.compile(r"\[([^\]\n]+)\]\[[^\]\n]*\]")
_AUTOLINK: Final = re.compile(r"<(?:https?|ftp|mailto):[^>\s]*>", re.IGNORECASE)
_URL: Final = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"'`，。！？；、（）【】「」]+", re.IGNORECASE
)
_HTML_TAG: Final = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_HEADING: Final = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]+|$)")
_HEADING_TAIL: Final = re.compile(r"[ \t]+#+[ \t]*$")
_QUOTE: Final = re.compile(r"^[ \t]*(?:>[ \t]?)+")
_LIST_MARKER: Final = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+(?:\[[ xX]\][ \t]+)?")
_RULE: Final = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_TABLE_RULE: Final = re.compile(r"^[ \t|:-]*-{3,}[ \t|:-]*$")
_STRONG: Final = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS_STAR: Final = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_EMPHASIS_UNDERSCORE: Final = re.compile(r"(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])")
_STRIKE: Final = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_STRAY_MARKS: Final = re.compile(r"\*{2,}|~~|`+|(?<=\w)\*|\*(?=\w)|(?<!\w)_+(?=\w)|(?<=\w)_+(?!\w)")
_EMOJI: Final = re.compile(
    "["
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, flags, symbols and more
    "\U00002600-\U000027bf"  # miscellaneous symbols and dingbats
    "\U00002b00-\U00002bff"  # stars, arrows and squares used as emoji
    "\U00002300-\U000023ff"  # watch, hourglass, keyboard
    "\U0000fe00-\U0000fe0f"  # variation selectors
    "\U0000200d"  # zero-width joiner
    "\U000020e3"  # combining keycap
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
    "]+"
)
_SPACE_BEFORE_PUNCT: Final = re.compile(r"[ \t]+([.,!?;:，。！？；：、])")
_SPACES: Final = re.compile(r"[ \t\u00a0\u3000]+")
_EMPTY_PUNCT: Final = re.compile(r"^[\s.,;:!?，。；：！？、()（）\[\]\-–—|]*$")
_SENTENCE_MARKS: Final = frozenset(".!?;:,。！？；：，、…")


def _strip_url(match: re.Match[str]) -> str:
    """Drop a URL but keep the punctuation that ends the sentence around it."""
    url = match.group(0)
    trimmed = url.rstrip(".,;:!?)]")
    return url[len(trimmed) :]


def clean_for_speech(text: str, *, at_line_start: bool = True) -> str:
    """Text a speech engine can read aloud: no Markdown syntax, code, URLs or emoji.

    Links and images keep their text, emphasis keeps its words, headings, quotes, list
    markers and rules lose their marks, fenced and inline code are dropped (read aloud
    they are noise), and so are URLs and emoji. A line that ends without punctuation
    gets a full stop (``。`` after CJK), so a heading or list item is heard as a sentence.
    With ``at_line_start=False`` the text is taken to continue a line, so its start is
    not read as a list marker or heading (for text cut from a stream mid-line).
    """
    text = _FENCED_BLOCK.sub("\n", text)
    text = _INLINE_CODE.sub("", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _AUTOLINK.sub("", text)
    text = _URL.sub(_strip_url, text)
    text = _HTML_TAG.sub("", text)
    lines = text.split("\n")
    spoken: list[str] = []
    for n, line in enumerate(lines):
        if n or at_line_start:
            if _RULE.match(line) or _TABLE_RULE.match(line):
                continue
            line = _HEADING.sub("", line)
            line = _HEADING_TAIL.sub("", line)
            line = _QUOTE.sub("", line)
            line = _LIST_MARKER.sub("", line)
        if line.count("|") >= 2:
            line = ", ".join(cell.strip() for cell in line.strip().strip("|").split("|"))
        line = _STRONG.sub(r"\2", line)
        line = _STRIKE.sub(r"\1", line)
        line = _EMPHASIS_STAR.sub(r"\1", line)
        line = _EMPHASIS_UNDERSCORE.sub(r"\1", line)
        line = _STRAY_MARKS.sub("", line)
        line = _EMOJI.sub("", line)
        line = line.replace("|", " ")
        line = _SPACES.sub(" ", line).strip()
        whole_line = n > 0 or at_line_start
        if not line or (whole_line and _EMPTY_PUNCT.match(line)):
            continue  # a rule, an empty table cell row, a line that was only code or emoji
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
        ends_line = n < len(lines) - 1
        if ends_line and line[-1] not in _SENTENCE_MARKS and not line.endswith(("'", '"')):
            line += "。" if _is_cjk(line[-1]) else "."
        spoken.append(line)
    return " ".join(spoken)


class SpeechTextStream:
    """Clean streamed Markdown into speakable text as it arrives, word by word.

    For engines that take the reply's text as a stream and do their own sentence
    splitting. ``feed(delta)`` returns the speakable text that ``delta`` completed (up to
    the last space, or CJK character, outside any code span, code block or link), or "";
    ``flush()`` returns the rest at the end. Joining everything returned gives the same
    words as :func:`clean_for_speech` of the whole text, give or take whitespace.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._at_line_start = True
        # A space owed before the next words: held back so that punctuation can follow
        # a dropped URL or emoji without a space in front of it ("see it. Then").
        self._space_owed = False
        self._spoke = False

    def feed(self, text: str) -> str:
        self._buf += text
        cut = _safe_cut(self._buf)
        if cut <= 0:
            return ""
        return self._emit(cut)

    def flush(self) -> str:
        if not self._buf:
            return ""
        return self._emit(len(self._buf))

    def _emit(self, cut: int) -> str:
        raw, self._buf = self._buf[:cut], self._buf[cut:]
        cleaned = clean_for_speech(raw, at_line_start=self._at_line_start)
        self._at_line_start = raw.endswith("\n")
        if raw[0].isspace():
            self._space_owed = True
        if not cleaned:
            self._space_owed = self._space_owed or raw[-1].isspace()
            return ""
        if self._space_owed and self._spoke and cleaned[0] not in _SENTENCE_MARKS:
            cleaned = " " + cleaned
        self._space_owed = raw[-1].isspace()
        self._spoke = True
        return cleaned


def _safe_cut(buf: str) -> int:
    """The end of the longest prefix of ``buf`` that can be cleaned on its own (0: none)."""
    best = 0
    in_fence: str | None = None
    in_code = 0  # length of the backtick run that opened an inline code span
    in_link = False  # between "[" and the end of its "(url)"
    in_target = 0  # parenthesis depth inside "](...)"
    i = 0
    n = len(buf)
    while i < n:
        char = buf[i]
        line_start = i == 0 or buf[i - 1] == "\n"
        if line_start:
            stripped = buf[i:].lstrip(" ")
            fence = next((f for f in _FENCES if stripped.startswith(f)), None)
            if in_fence is not None:
                if fence == in_fence:
                    end = buf.find("\n", i)
                    if end < 0:
                        return best
                    in_fence = None
                    i = end + 1
                    best = i
                    continue
                end = buf.find("\n", i)
                if end < 0:
                    return best
                i = end + 1
                continue
            if fence is not None:
                in_fence = fence
                end = buf.find("\n", i)
                if end < 0:
                    return best
                i = end + 1
                continue
            if len(stripped) < 3 and "\n" not in stripped:
                if stripped and any(f.startswith(stripped) for f in _FENCES):
                    return best
        if char == "\n" and in_code:
            in_code = 0  # a lone backtick: code spans do not run across lines here
        if char == "`":
            run = len(buf[i:]) - len(buf[i:].lstrip("`"))
            if in_code == 0:
                in_code = run
            elif run == in_code:
                in_code = 0
            i += run
            continue
        if not in_code:
            if char == "[" and not in_link:
                in_link = True
            elif in_link and char == "]" and in_target == 0:
                if i + 1 < n and buf[i + 1] == "(":
                    in_target = 1
                    i += 2
                    continue
                if i + 1 >= n:
                    return best  # "[text]" may yet become a link
                in_link = False
            elif in_target:
                if char == "(":
                    in_target += 1
                elif char == ")":
                    in_target -= 1
                    if in_target == 0:
                        in_link = False
            if in_link and char == "\n":
                in_link, in_target = False, 0
        if not in_code and not in_link and (char.isspace() or _is_cjk(char)):
            best = i + 1
        i += 1
    return best
