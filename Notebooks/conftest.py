"""Shared pytest setup: the estrace module, the exitscope binary and the traces to test on."""
import glob
import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)


def exitscope_binary() -> str:
    b = os.environ.get("EXITSCOPE_BIN") or os.path.join(REPO, ".build", "debug", "exitscope")
    if not os.path.exists(b):
        pytest.fail(f"exitscope binary not found at {b}: build it with `swift build --product exitscope` "
                    "(Notebooks/run_tests.sh does) or set EXITSCOPE_BIN")
    return b


def trace_paths():
    """Golden fixtures of the trace format plus any fresh traces run_tests.sh recorded."""
    paths = sorted(glob.glob(os.path.join(REPO, "Tests", "TraceTests", "Fixtures", "*.estrace")))
    extra = os.environ.get("ESTRACE_TRACES", "")
    paths += [p for p in extra.split(os.pathsep) if p]
    return paths


@pytest.fixture(scope="session")
def exitscope():
    return exitscope_binary()
