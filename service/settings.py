"""Service settings, read from ``MSDN_*`` environment variables (and an optional ``.env`` file).

Every limit the service enforces is a setting here; the README's "Service" section lists them.
List settings accept JSON (``["CT","MR"]``) or a comma-separated string (``CT,MR``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from msdn_core.proposals import DEFAULT_EXTEND_THRESHOLD

#: Output formats of ``POST /segment``.
OutputFormat = Literal["json", "nifti", "dicom-seg", "png"]
#: ``MSDN_PRECISION`` values (see ``service.providers``).
Precision = Literal["auto", "fp32", "fp16", "int8"]

if TYPE_CHECKING:
    from msdn_core.card import ModelCard
    from msdn_core.grid import ModelGrid
    from msdn_core.proposals import ProposalSettings
    from service.operating_point import ProposalThreshold

_CommaList = Annotated[list[str], NoDecode]

#: ``MSDN_BATCH_MAX_PIXELS`` default: two 512 x 512 slices per ONNX Runtime call (patches of 128 x 128
#: keep a batch of 8); docs/performance.md, session 4, has the measured trade-off.
BATCH_MAX_PIXELS = 2 * 512 * 512


def split_list_value(value: object) -> object:
    """A list setting given as text: a JSON list (``["a", "b"]``) or comma-separated (``a, b``).

    Shared by every ``Settings`` class with list fields (``NoDecode``); anything else passes through.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Configuration of one service process.

    Attributes are documented by their ``Field`` descriptions; the environment variable of
    ``max_slices`` is ``MSDN_MAX_SLICES``.
    """

    model_config = SettingsConfigDict(env_prefix="MSDN_", env_file=".env", extra="ignore")

    # Model and runtime
    model_path: Path = Field(Path("models/default.onnx"), description="ONNX model file (card in its metadata)")
    providers: _CommaList = Field(
        default_factory=lambda: ["auto"],
        description=(
            "execution provider: auto (CUDA when it really loads, else CPU), tensorrt, cuda or cpu; an explicitly "
            "named GPU provider that cannot load fails start-up"
        ),
    )
    precision: Precision = Field(
        "auto",
        description=(
            "fp32, fp16, int8 or auto (on CUDA the <model>.fp16.onnx variant when its card records a Dice loss within "
            "MSDN_FP16_MAX_DICE_LOSS; TensorRT fp16 unless that loss is over it; on the CPU the <model>.int8.onnx "
            "variant when its recorded loss is within MSDN_INT8_MAX_DICE_LOSS and the CPU has VNNI, else fp32)"
        ),
    )
    fp16_max_dice_loss: float = Field(0.5, ge=0, description="largest fp16 Dice loss (points) 'auto' accepts")
    int8_max_dice_loss: float = Field(
        0.5, ge=0, description="largest int8 Dice loss (points, recorded in its card) 'auto' accepts on the CPU"
    )
    int8_max_sensitivity_loss: float = Field(
        0.05,
        ge=0,
        le=1,
        description=(
            "detecting models: 'auto' serves the int8 variant only when the sensitivity its card's own calibration "
            "records is at most this below the fp32 card's (share of the calibration nodules found)"
        ),
    )
    int8_needs_vnni: bool = Field(
        True, description="'auto' serves int8 only on a CPU with VNNI int8 dot products (without, int8 is slower)"
    )
    tensorrt_cache_dir: Optional[Path] = Field(
        None, description="TensorRT engine and timing cache folder (a volume; default: a temp folder)"
    )
    io_binding: bool = Field(True, description="ONNX Runtime IO binding for the batches on a GPU provider")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: runtime default)")
    inter_op_threads: int = Field(0, ge=0, description="ONNX Runtime inter-op threads (0: runtime default)")
    intra_op_spinning: bool = Field(
        False,
        description=(
            "ONNX Runtime's intra-op worker threads spin while waiting for work (ONNX Runtime's own default); off "
            "(the default here): they sleep, 15% faster measured on a shared 2-core machine (docs/performance.md)"
        ),
    )
    batch_size: int = Field(8, ge=1, description="slices or patches per ONNX Runtime call")
    batch_max_pixels: int = Field(
        BATCH_MAX_PIXELS,
        ge=0,
        description=(
            "most input pixels (items x height x width) per ONNX Runtime call: batches of large slices are cut "
            "below MSDN_BATCH_SIZE to keep ONNX Runtime's activations small (0: no limit)"
        ),
    )
    overlap_batches: bool = Field(
        True, description="make the next batch (crop, pad, normalise) in a thread while ONNX Runtime runs the current"
    )
    arena_shrinkage: bool = Field(
        True,
        description="after each request's last batch, return ONNX Runtime's CPU arena growth to the system",
    )
    cpu_mem_arena: bool = Field(
        True, description="ONNX Runtime's CPU memory arena: faster, but keeps its peak memory (off: less RSS)"
    )
    malloc_mmap_threshold: int = Field(
        0,
        ge=0,
        le=32 * 1024 * 1024,
        description=(
            "glibc mmap threshold fixed at start-up (bytes; 0, the default: glibc's dynamic threshold): freed buffers "
            "at least this large leave the resident size at once instead of staying on the heap until the request "
            "ends; 131072 cut a 300x512^2 upload's peak by ~150 MiB but made box-mode requests ~0.15 s slower"
        ),
    )
    verify_sha256: bool = Field(True, description="refuse a model whose SHA-256 differs from its sidecar card")
    warmup: bool = Field(True, description="run the model once at start-up")

    # Limits
    max_upload_bytes: int = Field(1 << 30, ge=1, description="largest request body accepted (bytes)")
    max_files: int = Field(4096, ge=1, description="most files in one upload (including zip members)")
    max_slices: int = Field(2048, ge=1, description="most slices in one volume")
    max_voxels: int = Field(1 << 28, ge=1, description="most voxels in one volume")
    max_zip_uncompressed_bytes: int = Field(2 << 30, ge=1, description="largest total size of a zip's members")
    max_zip_ratio: float = Field(200.0, gt=1, description="largest uncompressed/compressed size ratio of a zip member")
    max_boxes: int = Field(4096, ge=1, description="most boxes in one request")
    max_components: int = Field(1000, ge=0, description="most connected components listed in a JSON answer")
    max_concurrent_inferences: int = Field(2, ge=1, description="requests running inference at once")
    max_queued_requests: int = Field(8, ge=0, description="requests allowed to wait for a free inference slot")
    queue_timeout_s: float = Field(30.0, gt=0, description="longest wait for a free slot before a 503")
    request_timeout_s: float = Field(300.0, gt=0, description="longest processing time of one request before a 504")
    retry_after_s: int = Field(5, ge=1, description="Retry-After seconds sent with a 503")

    # Input policy
    allowed_modalities: _CommaList = Field(
        default_factory=lambda: ["CT"], description="DICOM modalities accepted ('*' for any)"
    )
    slice_gap_rtol: float = Field(
        0.05, ge=0, description="a DICOM slice gap may differ from the median gap by this fraction"
    )
    max_gantry_tilt_deg: float = Field(
        30.0, ge=0, description="gantry tilts up to this are resampled onto an orthogonal grid, larger ones refused"
    )
    reference_position_tol_mm: Optional[float] = Field(
        None, gt=0, description="SEG frame to input slice position tolerance (mm); default a tenth of the voxel"
    )
    seg_keep_empty_frames: bool = Field(
        False,
        description="DICOM SEG answers keep a frame for every source slice, empty ones included (some viewers"
        " misplace segments when frames are omitted); default: empty frames omitted",
    )
    grid_spacing_rtol: float = Field(
        0.01,
        ge=0,
        lt=1,
        description="an input axis whose voxel size is within this relative difference of the model card's"
        " spacing_mm is not resampled onto the model grid (msdn_core.grid)",
    )

    # Security
    api_keys: _CommaList = Field(default_factory=list, description="accepted API keys; empty disables authentication")

    # Outputs and detection
    default_format: OutputFormat = Field("json", description="answer format when neither 'format' nor Accept picks one")
    proposal_score_threshold: Optional[float] = Field(
        None,
        ge=0,
        le=1,
        description=(
            "operating threshold: a 3D candidate is kept when its best slice box scores at least this; unset: the "
            "model card's calibrated threshold (msdn calibrate), else 0.5. mode=auto uses proposals only when the "
            "card has one or this is set (service.operating_point)"
        ),
    )
    proposal_confirmation: Optional[Literal["none", "segmentation"]] = Field(
        None,
        description=(
            "how proposal components are scored and thresholded: 'segmentation' = detection score x the "
            "component's mean whole-slice foreground probability (both networks must see it), 'none' = the "
            "detection score; unset: what the model card's calibrated threshold was chosen with (none for a card "
            "without it). Set it together with MSDN_PROPOSAL_SCORE_THRESHOLD: a threshold is only meaningful "
            "for the score it was chosen on"
        ),
    )
    proposal_extend_threshold: float = Field(
        DEFAULT_EXTEND_THRESHOLD,
        ge=0,
        le=1,
        description=(
            "slice boxes scoring at least this (clamped to at most the operating threshold) are collected and linked "
            "into 3D candidates, so a kept candidate keeps its whole z extent (hysteresis, msdn_core.proposals); "
            "1: the single-threshold scheme"
        ),
    )
    proposal_nms_iou: float = Field(
        0.3, gt=0, le=1, description="2D NMS per slice: a box overlapping a better one by more IoU is dropped"
    )
    max_proposals_per_slice: int = Field(20, ge=1, description="most detector boxes kept per slice and class")
    proposal_link_iou: float = Field(
        0.2, ge=0, le=1, description="least IoU of boxes on nearby slices to link them into one 3D candidate"
    )
    proposal_max_gap: int = Field(1, ge=0, description="slices without a box a 3D candidate may skip")
    proposal_min_slices: int = Field(1, ge=1, description="fewest slice boxes of a 3D candidate")
    proposal_nms_iou_3d: float = Field(
        0.2, ge=0, le=1, description="3D NMS: a candidate overlapping a better one by more 3D IoU is dropped"
    )
    max_candidates: int = Field(50, ge=1, description="most 3D candidates segmented per class")
    proposal_box_margin: float = Field(
        4.0, ge=0, description="pixels added on each side of a candidate's box before it is segmented"
    )
    proposal_z_margin: int = Field(
        1, ge=0, description="slices added above and below a candidate before it is segmented"
    )
    min_component_mm3: float = Field(
        5.0, ge=0, description="connected components smaller than this (mm^3) are removed from the answer"
    )
    keep_candidate_components: bool = Field(
        True, description="proposals mode: remove components that overlap no 3D candidate box"
    )

    # HTTP front (the header/connection limits are applied by ``msdn serve``; the body deadline and
    # the header count by the app itself)
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="most bytes of request headers; more: 431 (or the connection dropped)"
    )
    max_header_count: int = Field(100, ge=1, description="most request headers; more is answered 431")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection must send complete request headers within this time (msdn serve)"
    )
    keep_alive_s: float = Field(
        5.0, gt=0, description="an idle keep-alive connection is closed after this (msdn serve)"
    )
    body_timeout_s: float = Field(
        300.0, gt=0, description="the whole request body must arrive within this time, else 408 body_timeout"
    )
    max_connections: int = Field(
        256, ge=1, description="open HTTP connections at once; more are answered 503 (msdn serve)"
    )

    # Durable state
    data_dir: Path = Field(
        Path("msdn-data"), description="job records (SQLite) and files of background jobs (PACS push, SEG retries)"
    )

    # HTTP jobs (``/v1/jobs``)
    max_queued_jobs: int = Field(16, ge=1, description="HTTP jobs queued or running at once; more are answered 503")
    job_workers: int = Field(1, ge=1, description="HTTP jobs run at once (each one inference)")
    job_ttl_s: float = Field(86400.0, gt=0, description="finished HTTP jobs and their results are deleted after this")

    # Server (used by ``msdn serve``)
    host: str = Field("127.0.0.1", description="address uvicorn binds to")
    port: int = Field(8000, ge=0, le=65535, description="port uvicorn listens on")
    log_level: str = Field("info", description="logging level")
    shutdown_timeout_s: float = Field(
        60.0, gt=0, description="after SIGTERM, how long running requests may finish before they are cut"
    )

    @field_validator("providers", "allowed_modalities", "api_keys", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        return split_list_value(value)

    @field_validator("allowed_modalities")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [v.upper() for v in value]

    @property
    def auth_enabled(self) -> bool:
        """Whether requests need an API key."""
        return bool(self.api_keys)

    def proposal_threshold(self, card: Optional["ModelCard"] = None) -> "ProposalThreshold":
        """The proposal score threshold in use for a model with ``card`` and its source
        (``service.operating_point``: this setting, else the card's calibrated one, else 0.5)."""
        from service.operating_point import proposal_threshold

        return proposal_threshold(self.proposal_score_threshold, card)

    def proposal_confirmation_for(self, card: Optional["ModelCard"] = None) -> str:
        """``none`` or ``segmentation`` for a model with ``card``: this setting, else the card's
        (``service.operating_point.confirmation``)."""
        from service.operating_point import confirmation

        return confirmation(self.proposal_confirmation, card)

    def model_grid(self, card: "ModelCard") -> "ModelGrid":
        """The grid ``card``'s model expects (``msdn_core.grid``), with this service's spacing tolerance."""
        return card.input.model_grid(rtol=self.grid_spacing_rtol)

    def proposal_settings(self, card: Optional["ModelCard"] = None) -> "ProposalSettings":
        """The ``MSDN_PROPOSAL_*`` settings as ``msdn_core.proposals.ProposalSettings`` for a model with
        ``card`` (its calibrated threshold when the setting is unset)."""
        from msdn_core.proposals import ProposalSettings

        return ProposalSettings(
            score_threshold=self.proposal_threshold(card).value,
            extend_threshold=self.proposal_extend_threshold,
            nms_iou=self.proposal_nms_iou,
            max_per_slice=self.max_proposals_per_slice,
            link_iou=self.proposal_link_iou,
            max_gap=self.proposal_max_gap,
            min_slices=self.proposal_min_slices,
            nms_iou_3d=self.proposal_nms_iou_3d,
            max_candidates=self.max_candidates,
        )

    def modality_allowed(self, modality: Optional[str]) -> bool:
        """Whether a DICOM series of ``modality`` may be segmented."""
        return "*" in self.allowed_modalities or (modality or "").upper() in self.allowed_modalities


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
