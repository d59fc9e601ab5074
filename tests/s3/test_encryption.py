"""A bucket whose policy denies unencrypted writes (SSE-KMS with a given key, a bucket
key and a storage class on every object): the driver works through it, over HTTP.

moto accepts a bucket policy but does not evaluate S3's condition keys (it denies
every write a Deny statement with a condition names, whatever the headers), so the
policy is a real HTTP proxy in front of it that refuses, as S3 would, a PutObject,
CopyObject or CreateMultipartUpload lacking the headers; UploadPart and UploadPartCopy
carry none (parts take their multipart upload's encryption). moto records what it was
sent: HeadObject reports the encryption, key and storage class of every object.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from tests.plugins.app import make_config
from tests.plugins.encryption import enforce, missing_headers, run_upload_set
from tusd_py.http.app import create_app

KEY = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
POLICY = {"x-amz-server-side-encryption": "aws:kms",
          "x-amz-server-side-encryption-aws-kms-key-id": KEY,
          "x-amz-server-side-encryption-bucket-key-enabled": "true",
          "x-amz-storage-class": "STANDARD_IA"}
KEYS = {"server_side_encryption": "aws:kms", "sse_kms_key_id": KEY,
        "bucket_key_enabled": True, "storage_class": "STANDARD_IA"}


def makes_object(request: web.Request) -> bool:
    """PutObject, CopyObject or CreateMultipartUpload (not UploadPart(Copy), not
    CompleteMultipartUpload: S3 applies the multipart upload's encryption to those)."""
    if request.method == "PUT":
        return "partNumber" not in request.query and request.path.count("/") > 1
    return request.method == "POST" and "uploads" in request.query


def policy(request: web.Request, body: bytes) -> str | None:
    return missing_headers(request, POLICY) if makes_object(request) else None


def kind(key: str) -> str:
    """What a key under the prefix is (for the coverage check)."""
    for pattern, name in ((r"\.due/|\.owed/", "index marker"), (r"\.index$", "index guard"),
                          (r"-lease$", "turn"), (r"\.info$", "record"),
                          (r"\.t[0-9]{15}-", "tail segment")):
        if re.search(pattern, key):
            return name
    return "upload object"


async def through_policy(aiohttp_client: Any, config: dict[str, Any], endpoint: str,
                         keys: dict[str, Any]) -> Any:
    storage = {**config, "endpoint_url": endpoint, **keys}
    app = create_app(make_config(storage, expiration={"sweep_interval": 0}))
    return await aiohttp_client(app)


async def test_a_bucket_that_denies_unencrypted_writes_works(
        s3_proxy, aiohttp_client, s3_storage_config, s3_client, s3_bucket):
    proxy, endpoint = s3_proxy
    refused = enforce(proxy, policy)
    client = await through_policy(aiohttp_client, s3_storage_config, endpoint, KEYS)
    await run_upload_set(client)
    assert refused == []
    # Every kind of object-making request went through the policy.
    made = [f for f in proxy.log if f.method in ("PUT", "POST") and "partNumber" not in f.query
            and (f.method == "PUT" or "uploads" in f.query)]
    prefix = f"/{s3_bucket}/{s3_storage_config['prefix']}"
    kinds = {kind(f.path[len(prefix):]) for f in made}
    assert kinds == {"index marker", "index guard", "turn", "record", "tail segment",
                     "upload object"}
    assert any(f.method == "POST" for f in made)  # CreateMultipartUpload
    assert any("x-amz-copy-source" in {k.lower() for k in f.headers} for f in proxy.log)
    # What moto recorded on every object left in the bucket.
    objects = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert {kind(o["Key"]) for o in objects} >= {"record", "upload object", "index guard"}
    wrong, multipart = {}, 0
    for obj in objects:
        head = s3_client.head_object(Bucket=s3_bucket, Key=obj["Key"])
        got = (obj["StorageClass"], head.get("ServerSideEncryption"), head.get("SSEKMSKeyId"),
               head.get("StorageClass"), head.get("BucketKeyEnabled"))
        # moto keeps no bucket-key flag for a multipart upload (ETag "...-N"); the proxy
        # saw it on CreateMultipartUpload.
        if "-" in obj["ETag"]:
            multipart += 1
            got = (*got[:4], True)
        if got != ("STANDARD_IA", "aws:kms", KEY, "STANDARD_IA", True):
            wrong[obj["Key"]] = got
    assert wrong == {}
    assert multipart >= 3


async def test_without_the_keys_the_policy_refuses_the_first_write(
        s3_proxy, aiohttp_client, s3_storage_config):
    proxy, endpoint = s3_proxy
    refused = enforce(proxy, policy)
    client = await through_policy(aiohttp_client, s3_storage_config, endpoint, {})
    r = await client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"})
    assert r.status == 500
    assert "AccessDenied" in await r.text()
    assert refused and "x-amz-server-side-encryption" in refused[0].why
    # SSE-S3 alone (no key, no class) is refused too: the proxy checks each header.
    refused.clear()
    client = await through_policy(aiohttp_client, s3_storage_config, endpoint,
                                  {"server_side_encryption": "AES256"})
    r = await client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"})
    assert r.status == 500
    assert refused and "aws-kms-key-id" in refused[0].why


async def test_sse_s3_is_recorded_on_every_object(
        aiohttp_client, s3_storage_config, s3_client, s3_bucket):
    """AES256 with no storage class: moto reports SSE-S3 and STANDARD."""
    storage = {**s3_storage_config, "server_side_encryption": "AES256"}
    client = await aiohttp_client(create_app(make_config(storage)))
    await run_upload_set(client, sweep=False)
    for obj in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]:
        head = s3_client.head_object(Bucket=s3_bucket, Key=obj["Key"])
        assert head["ServerSideEncryption"] == "AES256", obj["Key"]
        assert "SSEKMSKeyId" not in head and obj["StorageClass"] == "STANDARD"


async def test_equal_parts_uploads_pass_the_policy_too(
        s3_proxy, aiohttp_client, s3_storage_config):
    """storage.equal_parts (its own concatenation: ranged copies, spans read and put)
    under the same policy."""
    proxy, endpoint = s3_proxy
    refused = enforce(proxy, policy)
    client = await through_policy(aiohttp_client, s3_storage_config, endpoint,
                                  {**KEYS, "equal_parts": True})
    await run_upload_set(client)
    assert refused == []
