"""msdn offline module: model family, data, training, evaluation and ONNX export.

Importing this package does not import PyTorch; the serving side may import the torch-free
modules (``model_export.card``) without the training extras installed.
"""

__version__ = "0.1.0"
