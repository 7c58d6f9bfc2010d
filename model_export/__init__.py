"""msdn offline module: model family, data, training, evaluation and ONNX export.

Importing this package does not import PyTorch; the serving side may import the torch-free
modules (``msdn_core.card``) without the training extras installed.
"""

from msdn_core import __version__

__all__ = ["__version__"]
