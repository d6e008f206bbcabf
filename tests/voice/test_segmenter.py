"""Where streamed reply text is cut for speech, and what of it is read aloud."""

from __future__ import annotations

import pytest

from voice.segmenter import SentenceSegmenter, SpeechTextStream, clean_for_speech


def segment(text: str, step: int | None = None, **options: object) -> list[str]:
    """Feed ``text`` in pieces of ``step`` characters (all at once when None), then flush."""
    segmenter = SentenceSegmenter(**options)  # type: ignore[arg-type]
    pieces: list[str] = []
    step = step or len(text) or 1
    for at in range(0, len(text), step):
        pieces += segmenter.feed(text[at : at + step])
    return pieces + segmenter.flush()


ENGLISH = [
    ("Hello there! How are you? I'm fine.", ["Hello there!", "How are you?", "I'm fine."]),
    ("First this; then that.", ["First this;", "then that."]),
    ("Pi is 3.14 today. Next.", ["Pi is 3.14 today.", "Next."]),
    ("Visit example.com today. Then rest.", ["Visit example.com today.", "Then rest."]),
    ("It costs $1,000.50 in total. Cheap.", ["It costs $1,000.50 in total.", "Cheap."]),
    ("Version 2.0. Done", ["Version 2.0.", "Done"]),
    (
        "Mr. Smith met Dr. Jones today. They talked.",
        ["Mr. Smith met Dr. Jones today.", "They talked."],
    ),
    ("Fruit, e.g. apples, i.e. red ones. Yes.", ["Fruit, e.g. apples, i.e. red ones.", "Yes."]),
    ("Cats vs. dogs is old. Really.", ["Cats vs. dogs is old.", "Really."]),
    (
        "J. R. R. Tolkien wrote it. So did I. Then",
        ["J. R. R. Tolkien wrote it.", "So did I.", "Then"],
    ),
    ("I live in the U.S. and like it.", ["I live in the U.S. and like it."]),
    ("The U.S. is big. Yes.", ["The U.S. is big.", "Yes."]),
    ("Call at 10 a.m. Bring food.", ["Call at 10 a.m.", "Bring food."]),
    ("Apples, pears, etc. are fruit.", ["Apples, pears, etc. are fruit."]),
    ("We ate apples etc. Then we left.", ["We ate apples etc.", "Then we left."]),
    ("Fig. 3 shows it. Clear.", ["Fig. 3 shows it.", "Clear."]),
    ("Well... maybe not. OK.", ["Well... maybe not.", "OK."]),
    ("I waited... Then he came.", ["I waited...", "Then he came."]),
    ("Wait… what? Fine!", ["Wait… what?", "Fine!"]),
    ('He said "Stop." Then left.', ['He said "Stop."', "Then left."]),
    ("It is **done.** Next one.", ["It is **done.**", "Next one."]),
    ("Really?! Yes!!", ["Really?!", "Yes!!"]),
    ("Steps:\n1. Open it\n2. Close it\nDone", ["Steps:", "1. Open it", "2. Close it", "Done"]),
    ("Title\n\nA paragraph here.\nAnother line", ["Title", "A paragraph here.", "Another line"]),
    ("No end mark at all", ["No end mark at all"]),
]

CHINESE = [
    (
        "你好！今天天气很好。我们去公园吧；好不好？",
        ["你好！", "今天天气很好。", "我们去公园吧；", "好不好？"],
    ),
    ("嗯……我想想。好的。", ["嗯……我想想。", "好的。"]),
    ("“真的吗？”她问。", ["“真的吗？”", "她问。"]),
    ("他说：「走吧。」然后走了。", ["他说：「走吧。」", "然后走了。"]),
    ("圆周率是3.14。对吧？", ["圆周率是3.14。", "对吧？"]),
    ("我用Python 3.11写代码。It works! 很好。", ["我用Python 3.11写代码。", "It works!", "很好。"]),
    ("第一段\n\n第二段。", ["第一段", "第二段。"]),
]


@pytest.mark.parametrize(("text", "expected"), ENGLISH + CHINESE)
def test_sentences(text: str, expected: list[str]) -> None:
    assert segment(text) == expected


@pytest.mark.parametrize(("text", "expected"), ENGLISH + CHINESE)
@pytest.mark.parametrize("step", [1, 2, 3, 5, 8])
def test_the_same_cuts_however_the_text_streams_in(
    text: str, expected: list[str], step: int
) -> None:
    assert segment(text, step) == expected


def test_a_sentence_is_returned_as_soon_as_the_next_character_proves_it() -> None:
    segmenter = SentenceSegmenter()
    assert segmenter.feed("Hello world.") == []  # "world.com" would not end it
    assert segmenter.feed(" ") == ["Hello world."]
    assert segmenter.feed("你好。") == []  # a closing quote may follow
    assert segmenter.feed("我") == ["你好。"]
    assert segmenter.feed("们走吧") == []
    assert segmenter.flush() == ["我们走吧"]


def test_a_short_form_waits_for_the_next_word() -> None:
    segmenter = SentenceSegmenter()
    assert segmenter.feed("We ate apples etc. ") == []
    assert segmenter.feed("and ") == []
    assert segmenter.feed("pears. T") == ["We ate apples etc. and pears."]


def test_the_segmenter_is_reusable_after_flush() -> None:
    segmenter = SentenceSegmenter()
    assert segmenter.feed("One. Tw") == ["One."]
    assert segmenter.flush() == ["Tw"]
    assert segmenter.feed("Three. ") == ["Three."]


# -- the early first cut -----------------------------------------------------------------


def test_a_long_first_sentence_is_cut_early_at_a_comma() -> None:
    text = (
        "This is a rather long opening sentence with a comma, and then it goes on. "
        "The next sentence, with a comma, stays whole."
    )
    assert segment(text) == [
        "This is a rather long opening sentence with a comma,",
        "and then it goes on.",
        "The next sentence, with a comma, stays whole.",
    ]


def test_a_short_first_sentence_is_not_cut_at_its_comma() -> None:
    assert segment("Sure, here it is. Yes, really.") == ["Sure, here it is.", "Yes, really."]


def test_the_early_cut_length_is_a_setting() -> None:
    text = "Sure, here it is, again. Yes, really."
    assert segment(text, first_cut_chars=5) == ["Sure,", "here it is, again.", "Yes, really."]
    assert segment(text, first_cut_chars=None) == ["Sure, here it is, again.", "Yes, really."]


def test_a_long_first_chinese_sentence_is_cut_early_at_a_chinese_comma() -> None:
    text = "这是一个相当长的开头句子，里面有很多字，用来测试提前切分。第二句，不切。"
    assert segment(text, first_cut_chars=10) == [
        "这是一个相当长的开头句子，",
        "里面有很多字，用来测试提前切分。",
        "第二句，不切。",
    ]


def test_a_thousands_separator_is_not_a_comma_cut() -> None:
    text = "The total over all the years we looked at is 1,234,567 dollars, more or less."
    assert segment(text, first_cut_chars=10) == [
        "The total over all the years we looked at is 1,234,567 dollars,",
        "more or less.",
    ]


# -- clause mode -------------------------------------------------------------------------


@pytest.mark.parametrize("step", [None, 1, 4])
def test_clause_mode_cuts_at_every_comma(step: int | None) -> None:
    text = "Sure, here it is, in clauses; done. 你好，世界、再见。It costs 1,000 dollars, ok."
    assert segment(text, step, clause_mode=True) == [
        "Sure,",
        "here it is,",
        "in clauses;",
        "done.",
        "你好，",
        "世界、",
        "再见。",
        "It costs 1,000 dollars,",
        "ok.",
    ]


# -- code and long runs ------------------------------------------------------------------


@pytest.mark.parametrize("step", [None, 1, 3, 7])
def test_a_fenced_code_block_is_one_piece_and_is_never_cut_inside(step: int | None) -> None:
    text = "Try this:\n```python\nx = 1. y = 2\nprint(x)\n```\nThat is all. Bye"
    pieces = segment(text, step)
    assert pieces == [
        "Try this:",
        "```python\nx = 1. y = 2\nprint(x)\n```",
        "That is all.",
        "Bye",
    ]
    assert [clean_for_speech(p) for p in pieces] == ["Try this:", "", "That is all.", "Bye"]


def test_an_unclosed_code_block_waits_for_its_end() -> None:
    segmenter = SentenceSegmenter()
    assert segmenter.feed("Look.\n```\nline one.\nline two. ") == ["Look."]
    assert segmenter.feed("\n```\nDone. ") == ["```\nline one.\nline two. \n```", "Done."]


def test_a_long_run_without_end_marks_is_cut_at_a_space() -> None:
    words = "word " * 150
    pieces = segment(words, 7, max_chars=100)
    assert all(len(p) <= 100 for p in pieces)
    assert " ".join(pieces).split() == words.split()  # no word is split
    assert len(pieces) >= 7


def test_a_long_chinese_run_without_marks_is_cut_hard() -> None:
    text = "字" * 250
    pieces = segment(text, 3, max_chars=100)
    assert [len(p) for p in pieces] == [100, 100, 50]


# -- cleaning ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "spoken"),
    [
        (
            "This is **bold**, *italic*, __strong__ and _under_.",
            "This is bold, italic, strong and under.",
        ),
        ("~~Old~~ new.", "Old new."),
        ("## A heading ##", "A heading"),
        ("# Title\nBody text", "Title. Body text"),
        ("- one\n- two\n* three\n+ four", "one. two. three. four"),
        ("1. first\n2) second", "first. second"),
        ("- [x] done task", "done task"),
        ("> quoted words", "quoted words"),
        ("See [the docs](https://example.com/a_(b)) now.", "See the docs now."),
        ("An image ![a cat](cat.png) here.", "An image a cat here."),
        ("A [reference link][1] here.", "A reference link here."),
        ("Visit https://example.com/path?q=1. Then go.", "Visit. Then go."),
        ("Or www.example.com, or <https://x.y>.", "Or, or."),
        ("Run `pip install parley` first.", "Run first."),
        ("Before\n```python\nprint('hi')\n```\nAfter", "Before. After"),
        ("Before\n~~~\ncode\n~~~\nAfter", "Before. After"),
        ("Unclosed\n```\ncode forever", "Unclosed."),
        (
            "Great job 😀👍🏽! Flags 🇨🇳🇺🇸 and family 👨‍👩‍👧 too ✨.",
            "Great job! Flags and family too.",
        ),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "a, b. 1, 2"),
        ("Above\n\n---\n\nBelow", "Above. Below"),
        ("Line one<br>line two", "Line oneline two"),
        ("snake_case and 2 * 3 stay", "snake_case and 2 * 3 stay"),
        ("**你好**，我是*豆包*😀！", "你好，我是豆包！"),
        ("## 标题\n- 第一项\n- 第二项", "标题。 第一项。 第二项"),
        ("请看[文档](https://example.com)。", "请看文档。"),
        ("代码`x = 1`不读。", "代码不读。"),
        ("😀🎉", ""),
        ("```\nonly code\n```", ""),
    ],
)
def test_clean_for_speech(markdown: str, spoken: str) -> None:
    assert clean_for_speech(markdown) == spoken


def test_clean_mid_line_does_not_read_the_start_as_a_list_marker() -> None:
    assert clean_for_speech("- 3 is the answer") == "3 is the answer"
    assert clean_for_speech("- 3 is the answer", at_line_start=False) == "- 3 is the answer"


# -- word-level cleaning for streaming engines --------------------------------------------

STREAMED = (
    "## Plan\n\nThis is **very** important, see [the docs](https://example.com/x) "
    "or https://example.com/y. Run `make test` now 😀!\n- first item\n- second item\n"
    "```bash\necho secret.\n```\nDone, 你好，**世界**！"
)


def stream_clean(text: str, step: int) -> list[str]:
    stream = SpeechTextStream()
    out = [stream.feed(text[at : at + step]) for at in range(0, len(text), step)]
    return [*out, stream.flush()]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 11, len(STREAMED)])
def test_streamed_cleaning_says_the_same_words_as_cleaning_the_whole(step: int) -> None:
    spoken = "".join(stream_clean(STREAMED, step))
    assert spoken.split() == clean_for_speech(STREAMED).split()
    assert "echo" not in spoken
    assert "make" not in spoken
    assert "https" not in spoken
    assert "**" not in spoken
    assert "😀" not in spoken


def test_streamed_cleaning_lets_words_go_as_soon_as_they_are_complete() -> None:
    stream = SpeechTextStream()
    assert stream.feed("Hello") == ""
    assert stream.feed(" wor") == "Hello"
    assert stream.feed("ld, how") == " world,"
    assert stream.feed("你好") == " how你好"
    assert stream.flush() == ""


def test_streamed_cleaning_holds_back_code_and_links_until_they_close() -> None:
    stream = SpeechTextStream()
    assert stream.feed("Run `pip ") == "Run"
    assert stream.feed("install x` now ") == " now"
    assert stream.feed("see [the ") == " see"
    assert stream.feed("docs](https://a.b/c d) ok ") == " the docs ok"
    assert stream.feed("\n```\ncode. ") == ""
    assert stream.feed("more\n```\nEnd ") == " End"
