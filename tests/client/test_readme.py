"""The README's client example runs as written, against a real daphne."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from tests.support.openai_server import Scenario

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "from parley_client import" in b)


async def test_the_readme_example_runs(daphne, llm, members, capsys):
    room, tokens = members
    llm.set_default(Scenario.normal(["A channel layer ", "passes messages."]))
    code = readme_example()
    code = code.replace("http://127.0.0.1:8000", daphne.http_url).replace(
        '"lobby"', repr(room.slug)
    )
    imports, _, body = code.partition("\n\n")
    source = (
        imports
        + "\n\nasync def example(TOKEN):\n"
        + textwrap.indent(body, "    ")
        + "\n    return rooms, reply, text, sent\n"
    )
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    rooms, reply, text, sent = await namespace["example"](tokens["ann"])
    assert room.slug in [r.slug for r in rooms]
    assert text == "A channel layer passes messages."
    assert capsys.readouterr().out == text
    assert reply.reply is not None
    assert sent.reply.text == text
