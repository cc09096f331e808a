#!/usr/bin/env python3
"""Exit 0 when every package of requirements.txt imports; else list the missing ones and exit 1."""
import importlib
import sys

MODULES = ["pandas", "matplotlib", "nbclient", "nbformat", "ipykernel", "zstandard", "pytest"]

missing = []
for m in MODULES:
    try:
        importlib.import_module(m)
    except Exception as e:  # an ImportError, or a broken install
        missing.append(f"{m} ({e.__class__.__name__}: {e})")

if missing:
    print("missing Python packages: " + ", ".join(missing), file=sys.stderr)
    print("install them with: python3 -m pip install -r Notebooks/requirements.txt", file=sys.stderr)
    sys.exit(1)
print("Notebooks requirements: all " + str(len(MODULES)) + " packages import")
