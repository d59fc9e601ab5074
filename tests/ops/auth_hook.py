"""The docs' pre-create/pre-access auth recipe (docs/hooks/python.md), as a Python hook the tests load
(``hooks.python: ["tests.ops.auth_hook:check"]``)."""

from __future__ import annotations

from typing import Any

#: Stand-in for a session store: Authorization header -> user.
USERS = {"Bearer alice-token": "alice", "Bearer bob-token": "bob"}


async def check(hook: dict[str, Any]) -> dict[str, Any]:
    header = hook["Event"]["HTTPRequest"]["Header"].get("Authorization", [""])[0]
    user = USERS.get(header)
    if user is None:
        return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 401, "Body": "login required"}}
    upload = hook["Event"]["Upload"]
    if hook["Type"] == "pre-create":  # remember the owner with the upload
        return {"ChangeFileInfo": {"MetaData": {**upload["MetaData"], "owner": user}}}
    if upload["MetaData"].get("owner") != user:  # pre-access: someone else's upload
        return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 403, "Body": "not yours"}}
    return {}
