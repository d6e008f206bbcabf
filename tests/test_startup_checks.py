"""A deployment that would fail every request refuses to start, saying what to run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daphne import ROOT, DaphneServer

HINT = "python manage.py collectstatic --noinput"


def test_daphne_without_collectstatic_refuses_to_start_and_says_what_to_run(
    tmp_path: Path,
) -> None:
    server = DaphneServer({"DJANGO_STATIC_ROOT": str(tmp_path), "DJANGO_DEBUG": "0"})
    with pytest.raises(RuntimeError, match="daphne exited") as failed:
        server.start(timeout=60)
    assert "parley.E001" in str(failed.value)
    assert HINT in str(failed.value)
    assert server.proc is not None
    assert server.proc.wait(timeout=10) != 0


def test_check_deploy_reports_it_and_passes_once_collected(tmp_path: Path) -> None:
    env = {"DJANGO_STATIC_ROOT": str(tmp_path), "DJANGO_DEBUG": "0"}
    before = manage("check", "--deploy", "--fail-level", "ERROR", env=env)
    assert before.returncode != 0
    assert "parley.E001" in before.stderr
    assert HINT in before.stderr
    assert manage("collectstatic", "--noinput", "--verbosity", "0", env=env).returncode == 0
    after = manage("check", "--deploy", "--fail-level", "ERROR", env=env)
    assert after.returncode == 0, after.stderr
    assert "parley.E001" not in after.stdout + after.stderr


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
