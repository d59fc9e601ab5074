"""Every request that makes an object goes through its driver's write-arguments method
(``S3Store.write_args``, ``gcs.client.Bucket.write_args``, ``AzureStore.write_args``):
a call making an object in a function that never asks for them is a forgotten one.
The HTTP tests behind bucket policies (tests/{s3,gcs,azure}/test_encryption.py) check
the calls an upload set makes; this reads the code for the ones it does not reach."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "tusd_py" / "storage"
#: The SDK calls that make an object, per driver package (GCS: methods of gcloud-aio's
#: ``Storage``, called as ``self.storage.X`` in ``gcs.client.Bucket``).
MAKERS = {
    "s3": {"put_object", "create_multipart_upload", "copy_object"},
    "gcs": {"upload", "compose", "copy", "copy_object"},
    "azure": {"upload_blob", "commit_block_list", "start_copy_from_url", "upload_blob_from_url"},
}


def _makes(package: str, node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in MAKERS[package]):
        return False
    receiver = node.func.value
    return package != "gcs" or (isinstance(receiver, ast.Attribute) and receiver.attr == "storage")


#: Calls that bring the write arguments (``object_args`` adds the metadata headers).
ASKING = ("write_args", "object_args")


def _asks(func: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr in ASKING for n in ast.walk(func))


def forgotten(package: str) -> list[str]:
    """``file:line function: call`` of each object-making call in a function that
    (with the functions around it) never calls ``write_args``."""
    out: list[str] = []

    def visit(node: ast.AST, path: Path, asked: bool, name: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            asked, name = asked or _asks(node), node.name
        if _makes(package, node) and not asked:
            assert isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            out.append(f"{path.name}:{node.lineno} {name}: {node.func.attr}")
        for child in ast.iter_child_nodes(node):
            visit(child, path, asked, name)

    for path in sorted((ROOT / package).glob("*.py")):
        visit(ast.parse(path.read_text()), path, False, "<module>")
    return out


@pytest.mark.parametrize("package", sorted(MAKERS))
def test_no_object_is_made_without_the_write_arguments(package: str) -> None:
    assert forgotten(package) == []


def test_the_check_finds_a_forgotten_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "x.py").write_text(
        "async def f(s3):\n    await s3.put_object(Bucket='b', Key='k', Body=b'')\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert forgotten("s3") == ["x.py:2 f: put_object"]
