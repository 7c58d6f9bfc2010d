"""msdn inference service: FastAPI + ONNX Runtime, no PyTorch.

Start it with ``msdn serve`` (or ``uvicorn service.main:app``); see ``service.main`` for the app,
``service.pipeline`` for the reusable datasets -> mask pipeline, ``service.settings`` for the
``MSDN_*`` configuration.
"""
