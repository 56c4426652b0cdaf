"""Shared pytest fixtures.

Real-data fixtures live in ``../shared/fixtures`` (never copied into the repo); tests
that need them use the ``fixtures_dir`` fixture, which skips cleanly where it is absent.
Override the location with ``EMOEDIT_FIXTURES=/path/to/fixtures``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _fixtures_root() -> Path:
    env = os.environ.get("EMOEDIT_FIXTURES")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    root = _fixtures_root()
    if not root.is_dir():
        pytest.skip(f"real-data fixtures not found at {root} (set EMOEDIT_FIXTURES)")
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed every test; one intra-op thread (the tests' tensors are small, and on a busy
    2-core machine a second thread makes small ops wait for the slower core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
