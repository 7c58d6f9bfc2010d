"""msdn_core: the torch-free concepts shared by training (``model_export``) and serving (``service``).

One owner per concept: the error vocabulary (:mod:`msdn_core.errors`), and, as they land, the model
card and input spec, geometry and the volume type, the readers, boxes, the crop policy and metrics.
Nothing here imports torch, MONAI, FastAPI, ``model_export`` or ``service``.
"""

__version__ = "0.1.0"
