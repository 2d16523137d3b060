"""What kind of file a user handed us, from its first bytes, before anything parses (or unpickles) it.

Knowing the kind first lets every loader say what a wrong file *is* ("an ONNX graph", "not a model
file at all") instead of passing a parser's traceback on, and keeps unpickling behind its opt-in.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from stvm_sdk.errors import ModelLoadError

# torch.save's legacy (non-zip) format: a pickle protocol-2 stream that starts with this magic long.
_TORCH_LEGACY = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_ZIP = b"PK\x03\x04"

KIND_TEXT = {
    "torch_zip": "a PyTorch archive",
    "torchscript": "a TorchScript archive",
    "torch_legacy": "a legacy PyTorch checkpoint",
    "pickle": "a plain Python pickle",
    "safetensors": "a safetensors file",
    "onnx": "an ONNX graph",
    "truncated_zip": "a truncated or corrupt archive",
    "empty": "an empty file",
    "unknown": "not a model file",
}


def file_kind(path: str | Path) -> str:
    """One of :data:`KIND_TEXT`'s keys for the file at ``path`` (which must exist)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except IsADirectoryError:
        raise ModelLoadError(f"{p} is a folder: pass the model file itself") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {p}: {exc.strerror}") from None
    if not head:
        return "empty"
    if head.startswith(_ZIP):
        return _zip_kind(p)
    if head.startswith(_TORCH_LEGACY):
        return "torch_legacy"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < p.stat().st_size:
        return "safetensors"
    if head[0] == 0x08 and _is_onnx(p):  # field 1 (ir_version), varint: how every ModelProto starts
        return "onnx"
    return "unknown"


def _zip_kind(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()  # the central directory is at the end: a cut-off file has none
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return "truncated_zip"
    return "torchscript" if any(n.endswith("constants.pkl") for n in names) else "torch_zip"


def _is_onnx(p: Path) -> bool:
    try:
        import onnx

        proto = onnx.load_model(str(p), load_external_data=False)
    except Exception:  # any parse failure: not an ONNX file
        return False
    return len(proto.graph.node) > 0 or len(proto.graph.input) > 0
