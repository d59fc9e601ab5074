"""Python hooks for the CORS tests: pre-create reads the page's custom ``X-Tenant``
request header and answers with an ``X-Upload-Token`` response header the page reads;
pre-finish answers the finishing PATCH with a header and a body the page reads."""

from __future__ import annotations

from typing import Any


def pre_create(hook: dict[str, Any]) -> dict[str, Any]:
    tenant = hook["Event"]["HTTPRequest"]["Header"].get("X-Tenant", [""])[0]
    if not tenant:
        return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 400, "Body": "no tenant"}}
    return {"HTTPResponse": {"Header": {"X-Upload-Token": f"token-for-{tenant}"}}}


def pre_finish(hook: dict[str, Any]) -> dict[str, Any]:
    tenant = hook["Event"]["HTTPRequest"]["Header"].get("X-Tenant", [""])[0]
    file_id = f"file-{tenant}-{hook['Event']['Upload']['Size']}"
    return {"HTTPResponse": {"StatusCode": 200, "Header": {"X-File-Id": file_id},
                             "Body": f'{{"url": "https://cdn.example/{file_id}"}}'}}
