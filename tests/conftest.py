"""Shared pytest set-up: make the in-tree collection importable as ``ansible_collections.unistra.itop``."""

from __future__ import annotations

import sys
from pathlib import Path

# The collection lives in <repo>/collections/ansible_collections/unistra/itop; Ansible imports it through the
# ``ansible_collections`` namespace package, so the directory above it goes on sys.path (relative to this file).
COLLECTIONS_DIR = Path(__file__).resolve().parent.parent / "collections"
if str(COLLECTIONS_DIR) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_DIR))
