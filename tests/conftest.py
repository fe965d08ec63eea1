"""Shared pytest fixtures.

* ``shared_dir``: ``../shared`` beside the repository (golden models, zoo); tests using it are
  skipped when it is absent, so the suite passes on a bare checkout.
* ``fixtures_dir``: ``tests/fixtures`` — small .espdl files kept in the repository (see its README).
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
