"""PACS connection settings (environment variables ``MSDN_PACS_*``).

Kept apart from the service's own ``Settings`` so the two can be merged or nested later; every field
has a safe default, and the PACS integration is off (``protocol="none"``) until configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.settings import split_list_value

#: A DICOM AE title: 1..16 characters of the default character repertoire, no backslash.
_AE_TITLE_PATTERN = r"^[ -\[\]-~]{1,16}$"


class PacsSettings(BaseSettings):
    """Where the PACS is and how to talk to it.

    ``protocol`` picks the client: ``dicomweb`` (QIDO-RS / WADO-RS / STOW-RS over HTTP) or ``dimse``
    (C-ECHO / C-FIND / C-GET or C-MOVE / C-STORE over the DICOM upper layer). ``none`` disables the
    PACS routes (they answer 503).
    """

    model_config = SettingsConfigDict(env_prefix="MSDN_PACS_", env_file=None, extra="ignore", populate_by_name=True)

    protocol: Literal["none", "dicomweb", "dimse"] = "none"

    # --- DICOMweb -------------------------------------------------------------------------------
    dicomweb_url: str | None = Field(default=None, description="DICOMweb base URL, e.g. http://orthanc:8042/dicom-web")
    dicomweb_qido_prefix: str | None = Field(default=None, description="path prefix for QIDO-RS")
    dicomweb_wado_prefix: str | None = Field(default=None, description="path prefix for WADO-RS")
    dicomweb_stow_prefix: str | None = Field(default=None, description="path prefix for STOW-RS")
    dicomweb_auth: Literal["none", "basic", "bearer"] = "none"
    dicomweb_username: str | None = None
    dicomweb_password: SecretStr | None = None
    dicomweb_token: SecretStr | None = None
    dicomweb_verify_tls: bool = Field(default=True, description="verify the server's TLS certificate")
    dicomweb_ca_bundle: str | None = Field(default=None, description="CA bundle file for TLS")
    dicomweb_max_attempts: int = Field(
        default=3, ge=1, le=10, description="HTTP attempts on 429/503/504 (exponential back-off)"
    )
    dicomweb_transfer_syntax: str = Field(
        default="*",
        description="transfer syntax asked for in WADO-RS ('*' = as stored; decoding happens here)",
    )

    # --- DIMSE ----------------------------------------------------------------------------------
    ae_title: str = Field(default="MSDN", pattern=_AE_TITLE_PATTERN, description="our (calling) AE title")
    peer_ae_title: str = Field(default="ORTHANC", pattern=_AE_TITLE_PATTERN, description="PACS (called) AE")
    peer_host: str = "127.0.0.1"
    peer_port: int = Field(default=4242, ge=1, le=65535)
    retrieve: Literal["c-get", "c-move"] = Field(
        default="c-get", description="how a series is pulled: C-GET on the association, or C-MOVE to us"
    )
    move_destination_ae: str | None = Field(
        default=None,
        pattern=_AE_TITLE_PATTERN,
        description="AE title the PACS sends C-MOVE results to (default: ae_title)",
    )
    storage_host: str = Field(default="0.0.0.0", description="bind address of our Storage SCP")
    storage_port: int = Field(default=11112, ge=0, le=65535, description="port of our Storage SCP (0 = any)")

    # --- timeouts (seconds) -----------------------------------------------------------------------
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP connect / HTTP connect timeout")
    acse_timeout_s: float = Field(default=10.0, gt=0, description="association negotiation timeout")
    dimse_timeout_s: float = Field(default=60.0, gt=0, description="wait for a DIMSE response")
    network_timeout_s: float = Field(default=60.0, gt=0, description="idle network / HTTP read timeout")

    # --- limits -----------------------------------------------------------------------------------
    max_instances: int = Field(default=2000, ge=1, description="most instances accepted in one series")
    max_series_bytes: int = Field(default=2 * 1024**3, ge=1, description="most bytes of DICOM accepted for one series")

    # --- Storage SCP listener (push from a modality / PACS, auto-segment) ------------------------
    listener_enabled: bool = False
    listener_series_idle_s: float = Field(
        default=5.0, gt=0, description="a pushed series is complete after this many quiet seconds"
    )
    listener_allowed_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="calling AE titles (besides peer_ae_title) allowed to push to us (JSON list or comma-separated)",
    )
    listener_send_result: bool = Field(default=True, description="C-STORE the SEG back to the peer")
    listener_max_associations: int = Field(
        default=16, ge=1, description="established associations at once on our Storage SCP (more are aborted)"
    )
    listener_max_connections: int = Field(
        default=64, ge=1, description="TCP connections at once on our Storage SCP (before any AE title check)"
    )
    listener_association_idle_s: float = Field(
        default=60.0, gt=0, description="an association of our Storage SCP idle this long is closed"
    )
    listener_max_pending_series: int = Field(default=16, ge=1, description="series being received at once")
    listener_workers: int = Field(default=2, ge=1, description="PACS jobs processed at once")

    # --- durable jobs (push listener and POST /v1/pacs/segment) ---------------------------------
    data_dir: Path = Field(
        default=Path("msdn-data"),
        validation_alias=AliasChoices("MSDN_DATA_DIR", "data_dir"),
        description="MSDN_DATA_DIR: job records (SQLite), spooled instances, SEGs waiting to be stored",
    )
    job_retry_initial_s: float = Field(default=2.0, gt=0, description="first delay before a store is retried")
    job_retry_max_s: float = Field(default=300.0, gt=0, description="longest delay between two store attempts")
    job_deadline_s: float = Field(
        default=24 * 3600.0, ge=0, description="a SEG store is retried for this long, then the job fails (SEG kept)"
    )

    # --- PACS network I/O --------------------------------------------------------------------------
    io_workers: int = Field(default=8, ge=1, description="PACS calls (fetch, store, query) running at once")
    io_max_queued: int = Field(default=16, ge=0, description="PACS calls waiting for a worker; more answer 503")
    io_deadline_s: float = Field(default=300.0, gt=0, description="overall time limit of one fetch or store")

    @field_validator("listener_allowed_aes", mode="before")
    @classmethod
    def _split_aes(cls, value: object) -> object:
        return split_list_value(value)

    @field_validator("dicomweb_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("dicomweb_url must start with http:// or https://")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _check_consistency(self) -> PacsSettings:
        if self.protocol == "dicomweb" and not self.dicomweb_url:
            raise ValueError("MSDN_PACS_DICOMWEB_URL is required when MSDN_PACS_PROTOCOL=dicomweb")
        if self.dicomweb_auth == "basic" and (not self.dicomweb_username or self.dicomweb_password is None):
            raise ValueError("dicomweb_auth=basic needs dicomweb_username and dicomweb_password")
        if self.dicomweb_auth == "bearer" and self.dicomweb_token is None:
            raise ValueError("dicomweb_auth=bearer needs dicomweb_token")
        return self

    @property
    def move_destination(self) -> str:
        """The AE title C-MOVE results are sent to."""
        return self.move_destination_ae or self.ae_title
