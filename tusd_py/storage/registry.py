"""Storage drivers, chosen by ``storage.driver``."""

from __future__ import annotations

from ..config import ConfigError, StorageConfig
from .base import Capability, Download, Store, Upload, UploadLock

__all__ = ["Capability", "Download", "Store", "Upload", "UploadLock", "build_store"]


def build_store(config: StorageConfig) -> Store:
    """The configured driver (not started). Cloud drivers import their SDK lazily."""
    if config.driver == "local":
        from .local.store import LocalStore

        return LocalStore(config.data_dir, fsync=config.fsync)
    if config.driver == "s3":
        try:
            from .s3.store import S3Store
        except ImportError as exc:
            raise ConfigError(f"storage.driver: s3 needs the s3 extra "
                              f"(pip install 'tusd-py[s3]'): {exc}") from None
        return S3Store(config.bucket, prefix=config.prefix, endpoint_url=config.endpoint_url,
                       region=config.region, part_size=config.part_size,
                       lease_duration=config.lease_duration, spill_dir=config.spill_dir)
    if config.driver == "azure":
        try:
            from .azure.store import AzureStore
        except ImportError as exc:
            raise ConfigError(f"storage.driver: azure needs the azure extra "
                              f"(pip install 'tusd-py[azure]'): {exc}") from None
        secret = config.connection_string
        return AzureStore(config.container, prefix=config.prefix,
                          connection_string=secret.get_secret_value() if secret else None,
                          account_url=config.account_url, part_size=config.part_size,
                          lease_duration=config.lease_duration,
                          create_container=config.create_container)
    if config.driver == "gcs":
        try:
            from .gcs.store import GCSStore
        except ImportError as exc:
            raise ConfigError(f"storage.driver: gcs needs the gcs extra "
                              f"(pip install 'tusd-py[gcs]'): {exc}") from None
        return GCSStore(config.bucket, prefix=config.prefix, endpoint_url=config.endpoint_url,
                        part_size=config.part_size, lease_duration=config.lease_duration)
    raise ConfigError(f"storage.driver: the {config.driver!r} driver is not available in this build")
