"""On a server's PYTHONPATH: opentelemetry cannot be imported, as in an installation
without the "otel" extra (tests/core/test_tracing.py). Python imports ``sitecustomize``
at start-up, before anything else."""

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class _NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname == "opentelemetry" or fullname.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


sys.meta_path.insert(0, _NoOpenTelemetry())
