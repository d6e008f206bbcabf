"""The project installs as a package whose only dependencies are the client's two, with
the terminal chat as a console script (``make install`` installs it: ``pip install -e .``)."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_needs_only_httpx_and_websockets_and_names_parley_chat(capsys):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~ \[]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    assert names == {"httpx", "websockets"}
    module, _, attr = project["scripts"]["parley-chat"].partition(":")
    main = getattr(importlib.import_module(module), attr)
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "usage: parley-chat" in capsys.readouterr().out
