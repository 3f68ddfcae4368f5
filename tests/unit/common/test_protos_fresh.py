"""The generated code committed beside the protos matches what `make protos` produces."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = ROOT / "protos"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    protos = sorted(PROTO_DIR.glob("facegen/v1/*.proto"))
    assert protos, "no .proto files found"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
         *(str(p.relative_to(PROTO_DIR)) for p in protos)],
        check=True, cwd=PROTO_DIR,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated
    stale = [str(rel) for rel in generated
             if not (PROTO_DIR / rel).exists() or (PROTO_DIR / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"generated code is stale, run `make protos`: {stale}"
