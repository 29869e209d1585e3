"""The suite's own layout: pytest imports test modules by basename (rootdir-relative, no
packages), so two test files with one name in different folders break collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def test_no_two_test_modules_share_a_basename():
    root = Path(__file__).resolve().parents[1]
    names = Counter(p.name for p in root.rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []
