"""A pre-create Python hook for the CORS tests: it reads the page's custom ``X-Tenant``
request header and answers with an ``X-Upload-Token`` response header the page reads."""

from __future__ import annotations

from typing import Any


def pre_create(hook: dict[str, Any]) -> dict[str, Any]:
    tenant = hook["Event"]["HTTPRequest"]["Header"].get("X-Tenant", [""])[0]
    if not tenant:
        return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 400, "Body": "no tenant"}}
    return {"HTTPResponse": {"Header": {"X-Upload-Token": f"token-for-{tenant}"}}}
