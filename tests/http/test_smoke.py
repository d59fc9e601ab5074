from tests.plugins.daemon import Daemon


async def test_create_patch_head(tus):
    r = await tus.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"})
    assert r.status == 201
    from urllib.parse import urlsplit

    location = urlsplit(r.headers["Location"]).path
    r = await tus.patch(location, data=b"hello", headers={
        "Tus-Resumable": "1.0.0", "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream"})
    assert r.status == 204, await r.text()
    assert r.headers["Upload-Offset"] == "5"
    r = await tus.get(location)
    assert await r.read() == b"hello"


def test_daemon_starts(daemon: Daemon):
    import urllib.request

    req = urllib.request.Request(daemon.url, method="OPTIONS")
    with urllib.request.urlopen(req) as r:
        assert "creation" in r.headers["Tus-Extension"]
