"""The encryption and storage-class keys of the object-store drivers: combinations S3,
GCS and Azure refuse are one-line start-up errors (exit 2, before anything starts), and
the values reach each driver's one write-arguments method."""

from __future__ import annotations

import pytest

from tests.system.test_config_cli import run_cli
from tusd_py.config import ConfigError, load_config
from tusd_py.storage.registry import build_store

S3 = {"TUSD_STORAGE__DRIVER": "s3", "TUSD_STORAGE__BUCKET": "b"}
GCS = {"TUSD_STORAGE__DRIVER": "gcs", "TUSD_STORAGE__BUCKET": "b"}
AZURE = {"TUSD_STORAGE__DRIVER": "azure", "TUSD_STORAGE__CONTAINER": "c",
         "TUSD_STORAGE__CONNECTION_STRING": "UseDevelopmentStorage=true"}
GCS_KEY = "projects/p/locations/us/keyRings/r/cryptoKeys/k"


@pytest.mark.parametrize("env,needle", [
    ({**S3, "TUSD_STORAGE__SSE_KMS_KEY_ID": "alias/uploads"},
     "sse_kms_key_id needs server_side_encryption: aws:kms"),
    ({**S3, "TUSD_STORAGE__SERVER_SIDE_ENCRYPTION": "AES256",
      "TUSD_STORAGE__SSE_KMS_KEY_ID": "alias/uploads"},
     "sse_kms_key_id needs server_side_encryption: aws:kms"),
    ({**S3, "TUSD_STORAGE__SERVER_SIDE_ENCRYPTION": "aws:kms:dsse",
      "TUSD_STORAGE__BUCKET_KEY_ENABLED": "true"},
     "bucket_key_enabled needs server_side_encryption: aws:kms"),
    ({**S3, "TUSD_STORAGE__SERVER_SIDE_ENCRYPTION": "aes"},
     "storage.server_side_encryption: must be one of AES256, aws:kms, aws:kms:dsse"),
    ({**S3, "TUSD_STORAGE__STORAGE_CLASS": "GLACIER"},
     "storage.storage_class: GLACIER cannot be used: objects in it cannot be read"),
    ({**S3, "TUSD_STORAGE__STORAGE_CLASS": "deep_archive"},
     "storage.storage_class: DEEP_ARCHIVE cannot be used"),
    ({**S3, "TUSD_STORAGE__STORAGE_CLASS": "COLD"}, "storage.storage_class: must be one of"),
    ({**GCS, "TUSD_STORAGE__KMS_KEY_NAME": GCS_KEY + "/cryptoKeyVersions/1"},
     "storage.kms_key_name: must be a Cloud KMS key name"),
    ({**GCS, "TUSD_STORAGE__STORAGE_CLASS": "GLACIER"},
     "storage.storage_class: must be one of STANDARD, NEARLINE, COLDLINE, ARCHIVE"),
    ({**AZURE, "TUSD_STORAGE__ACCESS_TIER": "archive"},
     "storage.access_tier: Archive cannot be used: an archived blob cannot be read"),
    ({**AZURE, "TUSD_STORAGE__ACCESS_TIER": "Premium"},
     "storage.access_tier: must be one of Hot, Cool, Cold"),
    ({**GCS, "TUSD_STORAGE__SERVER_SIDE_ENCRYPTION": "AES256"},
     "storage.server_side_encryption: not a setting of the gcs driver"),
])
def test_refused_combinations_exit_2_with_one_line(env, needle):
    with pytest.raises(ConfigError, match="storage"):
        load_config("/dev/null", env=env)
    result = run_cli("serve", "--config", "/dev/null", env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if needle in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr


def test_the_values_reach_the_drivers():
    store = build_store(load_config("/dev/null", env={
        **S3, "TUSD_STORAGE__SERVER_SIDE_ENCRYPTION": "aws:kms",
        "TUSD_STORAGE__SSE_KMS_KEY_ID": "alias/uploads", "TUSD_STORAGE__BUCKET_KEY_ENABLED": "false",
        "TUSD_STORAGE__STORAGE_CLASS": "intelligent_tiering"}).storage)
    assert store.write_args() == {  # type: ignore[attr-defined]
        "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/uploads",
        "BucketKeyEnabled": False, "StorageClass": "INTELLIGENT_TIERING"}
    store = build_store(load_config("/dev/null", env=S3).storage)
    assert store.write_args() == {}  # type: ignore[attr-defined]
    store = build_store(load_config("/dev/null", env={
        **GCS, "TUSD_STORAGE__KMS_KEY_NAME": GCS_KEY,
        "TUSD_STORAGE__STORAGE_CLASS": "coldline"}).storage)
    assert store.bucket.write_args() == (  # type: ignore[attr-defined]
        {"kmsKeyName": GCS_KEY}, {"Storage-Class": "COLDLINE"})
    store = build_store(load_config("/dev/null", env={
        **AZURE, "TUSD_STORAGE__ACCESS_TIER": "cold"}).storage)
    assert store.write_args() == {"standard_blob_tier": "Cold"}  # type: ignore[attr-defined]
