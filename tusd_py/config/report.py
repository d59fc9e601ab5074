"""Printing the configuration (``check-config``), secrets masked."""

from __future__ import annotations

import yaml

from .models import Config


def dump_config(config: Config) -> str:
    """The effective config as YAML, secrets masked."""
    data = config.model_dump(mode="json")  # SecretStr dumps as '**********'
    return yaml.safe_dump(data, sort_keys=False)
