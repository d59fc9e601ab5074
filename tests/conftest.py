"""Shared fixtures. Area-specific fixtures live in ``tests/plugins/`` (one module per
area, registered below) or in the area's own ``conftest.py``. ``tests.plugins.ci_guard``
fails a ``CI=true`` run that skipped a test (opt-out: ``TUSD_TEST_ALLOW_SKIPS=1``)."""

pytest_plugins = [
    "tests.plugins.ci_guard",
    "tests.plugins.daemon",
    "tests.plugins.app",
    "tests.plugins.s3",
    "tests.plugins.azure",
    "tests.plugins.gcs",
]
