"""pytest plugin: the ``clean_exit`` fixture.

Loaded automatically when exitguard is installed (entry point ``pytest11``), or with
``pytest -p exitguard.pytest_plugin``::

    def test_my_extension_exits_cleanly(clean_exit):
        clean_exit("import myext; myext.start_workers()")

The fixture is :func:`exitguard.testing.assert_clean_exit`: it reports every kind of bad
exit in :data:`exitguard.testing.KINDS` (``allow=`` accepts the ones a test provokes).
"""

import pytest

from .testing import assert_clean_exit


@pytest.fixture
def clean_exit():
    """Run code in a fresh interpreter; fail with a readable report unless it exits cleanly."""
    return assert_clean_exit
