"""The client runs with nothing of Django: only parley_client, websockets, httpx and what
those two need, in an isolated interpreter (``python -I -S``: no site-packages at all)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.openai_server import Scenario

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
try:
    import django  # noqa: F401
except ImportError:
    django_importable = False
else:
    django_importable = True

from parley_client import Client, Delta, Generation

async def main(url, token, slug):
    async with Client(url, token=token) as client:
        async with client.room(slug) as room:
            sent = await room.send("hello from outside @assistant")
            text = ""
            async for event in room.events():
                if isinstance(event, Delta) and event.message_id == sent.id:
                    text += event.text
                if isinstance(event, Generation) and event.is_terminal:
                    return text, event.state

text, state = asyncio.run(main(*sys.argv[2:5]))
print(json.dumps({
    "django_importable": django_importable,
    "text": text,
    "state": state,
    "modules": sorted({name.split(".")[0] for name in sys.modules}),
    "path": sys.path,
}))
"""


def distributions_needed(*names: str) -> set[str]:
    """The named distributions and everything they require (no extras), by metadata."""
    needed: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in needed:
            continue
        needed.add(key)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return needed


def isolated_path(tmp_path: Path) -> Path:
    """A folder holding parley_client and the import packages of its dependencies only."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "parley_client").symlink_to(ROOT / "parley_client")
    wanted = distributions_needed("websockets", "httpx")
    for top, dists in metadata.packages_distributions().items():
        if not any(re.sub(r"[-_.]+", "-", d).lower() in wanted for d in dists):
            continue
        spec = importlib.util.find_spec(top)
        if spec is None:
            continue
        if spec.submodule_search_locations:
            source = Path(next(iter(spec.submodule_search_locations)))
        elif spec.origin:
            source = Path(spec.origin)
        else:
            continue
        target = site / source.name
        if not target.exists():
            target.symlink_to(source)
    return site


def test_the_client_needs_nothing_of_django(daphne, llm, members, tmp_path):
    room, tokens = members
    llm.set_default(Scenario.normal(["Hi ", "there."]))
    site = isolated_path(tmp_path)
    names = {p.name for p in site.iterdir()}
    assert {"parley_client", "websockets", "httpx"} <= names
    assert not {"django", "channels", "daphne"} & names
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            SCRIPT,
            str(site),
            daphne.http_url,
            tokens["ann"],
            room.slug,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["django_importable"] is False
    assert (out["text"], out["state"]) == ("Hi there.", "complete")
    assert not {"django", "channels", "chat", "config", "prompt_toolkit"} & set(out["modules"])
    assert not [p for p in out["path"] if "site-packages" in p]
