"""A real Orthanc PACS for the tests: config in a temp folder, started as a subprocess.

Used by ``conftest.py``; also runnable by hand (``python -m tests.service.pacs.orthanc_server``) to get
a throw-away Orthanc on free ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

ORTHANC_BINARY = Path(os.environ.get("MSDN_ORTHANC_BINARY", "/usr/sbin/Orthanc"))
DICOMWEB_PLUGIN = Path(
    os.environ.get("MSDN_ORTHANC_DICOMWEB_PLUGIN", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
)


def orthanc_required() -> bool:
    """Missing Orthanc is an error (not a skip) in CI or with MSDN_REQUIRE_ORTHANC=1."""
    return bool(os.environ.get("CI")) or os.environ.get("MSDN_REQUIRE_ORTHANC") == "1"


def require_orthanc() -> None:
    """Fail (CI) or skip (elsewhere) the calling test/fixture when Orthanc is not installed."""
    import pytest

    missing = [str(p) for p in (ORTHANC_BINARY, DICOMWEB_PLUGIN) if not p.exists()]
    if not missing:
        return
    message = f"Orthanc is not installed (missing {', '.join(missing)}); run scripts/install_orthanc.sh"
    if orthanc_required():
        pytest.fail(message + " (required: CI or MSDN_REQUIRE_ORTHANC=1 is set)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OrthancServer:
    """One Orthanc process with HTTP + DICOM on free local ports, DICOMweb on, storage in ``workdir``.

    Args:
        workdir: folder for the config, storage and log (created).
        aet: Orthanc's own AE title.
        username / password: the one HTTP user (basic auth is enabled).
        modalities: DicomModalities entries, name -> (AET, host, port); all DIMSE services allowed.
        base_config: use this configuration instead (e.g. docker/orthanc/orthanc.json); only the ports,
            the storage folders and the plugin path are replaced.
        env: extra environment for Orthanc (its config may say ``${VAR}``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        username: str = "msdn",
        password: str = "orthanc-test-pw",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        base_config: dict | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.username = username
        self.password = password
        self.modalities = dict(modalities or {})
        self.base_config = base_config
        self.env = dict(env or {})
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"
        self.rest = requests.Session()
        self.rest.auth = (username, password)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        """The Orthanc JSON configuration."""
        if self.base_config is not None:
            return {
                **self.base_config,
                "StorageDirectory": str(self.workdir / "storage"),
                "IndexDirectory": str(self.workdir / "index"),
                "HttpPort": self.http_port,
                "DicomPort": self.dicom_port,
                "Plugins": [str(DICOMWEB_PLUGIN)],
            }
        return {
            "Name": "msdn-test-orthanc",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
            # Unknown AEs are refused: every DICOM service is granted per modality below.
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomCheckModalityHost": False,
            "DicomModalities": {
                name: {
                    "AET": aet,
                    "Host": host,
                    "Port": port,
                    "AllowEcho": True,
                    "AllowFind": True,
                    "AllowGet": True,
                    "AllowMove": True,
                    "AllowStore": True,
                }
                for name, (aet, host, port) in self.modalities.items()
            },
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 10,
            "StableAge": 2,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 10,
            "KeepAlive": True,
            "LimitFindResults": 0,
            "OverwriteInstances": False,
        }

    def start(self, timeout_s: float = 30.0) -> OrthancServer:
        """Write the config, start Orthanc, wait until its REST API answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(ORTHANC_BINARY), str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.rest.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.rest.close()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # --- REST helpers (an independent path to Orthanc's content) ---------------------------------

    def upload(self, data: bytes) -> dict:
        """POST /instances; returns Orthanc's answer (ID, ParentSeries, Status...)."""
        response = self.rest.post(f"{self.url}/instances", data=data, timeout=30)
        response.raise_for_status()
        return response.json()

    def upload_file(self, path: Path | str) -> dict:
        return self.upload(Path(path).read_bytes())

    def find(self, level: str, query: dict) -> list[str]:
        """POST /tools/find; Orthanc IDs of the matches."""
        response = self.rest.post(f"{self.url}/tools/find", json={"Level": level, "Query": query}, timeout=30)
        response.raise_for_status()
        return response.json()

    def instance_file(self, orthanc_id: str) -> bytes:
        response = self.rest.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30)
        response.raise_for_status()
        return response.content

    def series_instance_files(self, series_uid: str) -> list[bytes]:
        """The stored DICOM files of a series, found by its SeriesInstanceUID through REST."""
        files = []
        for series_id in self.find("Series", {"SeriesInstanceUID": series_uid}):
            response = self.rest.get(f"{self.url}/series/{series_id}/instances", timeout=30)
            response.raise_for_status()
            files.extend(self.instance_file(item["ID"]) for item in response.json())
        return files

    def delete_all(self) -> None:
        """Remove every patient (and so everything) from Orthanc."""
        response = self.rest.get(f"{self.url}/patients", timeout=30)
        response.raise_for_status()
        for patient in response.json():
            self.rest.delete(f"{self.url}/patients/{patient}", timeout=30).raise_for_status()


if __name__ == "__main__":  # pragma: no cover - manual use
    import tempfile

    server = OrthancServer(Path(tempfile.mkdtemp(prefix="orthanc-")), modalities={"msdn": ("MSDN", "127.0.0.1", 11112)})
    server.start()
    print(f"Orthanc at {server.url} (user {server.username}), DICOM {server.aet}@127.0.0.1:{server.dicom_port}")
    try:
        server.process.wait()  # type: ignore[union-attr]
    except KeyboardInterrupt:
        server.stop()
