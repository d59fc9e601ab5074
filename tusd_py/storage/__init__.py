"""Storage drivers, chosen by ``storage.driver``."""

from __future__ import annotations

from ..config import ConfigError, StorageConfig
from .base import Capability, Download, Store, Upload, UploadLock

__all__ = ["Capability", "Download", "Store", "Upload", "UploadLock", "build_store"]


def build_store(config: StorageConfig) -> Store:
    """The configured driver (not started). Cloud drivers import their SDK lazily."""
    if config.driver == "local":
        from .local import LocalStore

        return LocalStore(config.data_dir, fsync=config.fsync)
    raise ConfigError(f"storage.driver: the {config.driver!r} driver is not available in this build")
