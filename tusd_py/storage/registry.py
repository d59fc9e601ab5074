"""Driver name -> the store it builds from its ``storage`` config section.

Cloud drivers import their SDK only when chosen; a missing extra is a ``ConfigError``
that names it, raised by ``check-config`` and ``serve`` alike (neither starts the store).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import (
    AzureStorage,
    ConfigError,
    GCSStorage,
    LocalStorage,
    MemoryStorage,
    S3Storage,
    StorageConfig,
)
from .base import Store


def _local(config: LocalStorage) -> Store:
    from .local.store import LocalStore

    return LocalStore(config.data_dir, fsync=config.fsync)


def _memory(config: MemoryStorage) -> Store:
    from .memory.store import MemoryStore

    return MemoryStore()


def _s3(config: S3Storage) -> Store:
    from .s3.store import S3Store

    return S3Store(config.bucket, prefix=config.prefix, endpoint_url=config.endpoint_url,
                   region=config.region, part_size=config.part_size,
                   lease_duration=config.lease_duration, spill_dir=config.spill_dir,
                   part_concurrency=config.part_concurrency, equal_parts=config.equal_parts,
                   server_side_encryption=config.server_side_encryption,
                   sse_kms_key_id=config.sse_kms_key_id,
                   bucket_key_enabled=config.bucket_key_enabled,
                   storage_class=config.storage_class)


def _gcs(config: GCSStorage) -> Store:
    from .gcs.store import GCSStore

    return GCSStore(config.bucket, prefix=config.prefix, endpoint_url=config.endpoint_url,
                    part_size=config.part_size, lease_duration=config.lease_duration,
                    part_concurrency=config.part_concurrency, spill_dir=config.spill_dir,
                    kms_key_name=config.kms_key_name, storage_class=config.storage_class)


def _azure(config: AzureStorage) -> Store:
    from .azure.store import AzureStore

    secret = config.connection_string
    return AzureStore(config.container, prefix=config.prefix,
                      connection_string=secret.get_secret_value() if secret else None,
                      account_url=config.account_url, part_size=config.part_size,
                      lease_duration=config.lease_duration,
                      create_container=config.create_container,
                      part_concurrency=config.part_concurrency, spill_dir=config.spill_dir,
                      access_tier=config.access_tier)


#: driver -> (factory, the pip extra its SDK comes with, or None).
DRIVERS: dict[str, tuple[Callable[[Any], Store], str | None]] = {
    "local": (_local, None),
    "memory": (_memory, None),
    "s3": (_s3, "s3"),
    "gcs": (_gcs, "gcs"),
    "azure": (_azure, "azure"),
}


def build_store(config: StorageConfig) -> Store:
    """The configured driver, built but not started."""
    factory, extra = DRIVERS[config.driver]
    try:
        return factory(config)
    except ImportError as exc:
        if extra is None:
            raise
        raise ConfigError(f"storage.driver: {config.driver} needs the {extra} extra "
                          f"(pip install '.[{extra}]' from a checkout): {exc}") from None
