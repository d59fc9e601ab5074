"""Shared fixtures. Area-specific fixtures live in ``tests/plugins/`` (one module per
area, registered below) or in the area's own ``conftest.py``."""

pytest_plugins = [
    "tests.plugins.daemon",
    "tests.plugins.app",
    "tests.plugins.s3",
    "tests.plugins.azure",
    "tests.plugins.gcs",
]
