"""ONNX export of the segmentation path, its parity check, and the fp16 / int8 variants.

>>> from model_export.export import export_checkpoint
>>> result = export_checkpoint("runs/msdn/best.pt", "model.onnx")  # doctest: +SKIP

Imports PyTorch; the torch-free reader of exported files is ``msdn_core.onnx_model``.
"""

from model_export.export.onnx_export import (
    DEFAULT_OPSET,
    ExportError,
    ExportResult,
    ParityError,
    ParityReport,
    build_export_card,
    check_parity,
    export_checkpoint,
    export_model,
)

__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "ExportResult",
    "ParityError",
    "ParityReport",
    "build_export_card",
    "check_parity",
    "export_checkpoint",
    "export_model",
]
