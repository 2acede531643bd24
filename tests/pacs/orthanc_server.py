"""A real Orthanc (Debian's ``orthanc`` package) started on loopback ports for the tests.

Configured in a JSON file in the test's temp dir: its own storage and index folders,
HTTP basic auth with a test user, the DICOMweb plugin when installed, and a
``DicomModalities`` entry for cad's SCU AE title so that C-FIND and C-GET are allowed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "cadtest", "orthanc-test-Pa55-word-7f3c"
ORTHANC_AET, CAD_AET = "ORTHANC", "CADTEST"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """One running Orthanc; ``stop()`` at teardown."""

    root: Path
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    dicomweb: bool = DICOMWEB_PLUGIN.is_file()
    process: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http}/dicom-web"

    @property
    def dimse_url(self) -> str:
        return f"dicom://{ORTHANC_AET}@127.0.0.1:{self.dicom_port}"

    def config(self) -> dict:
        storage, index = self.root / "storage", self.root / "index"
        storage.mkdir(parents=True, exist_ok=True)
        index.mkdir(parents=True, exist_ok=True)
        return {
            "Name": "cad-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(index),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET,
            "RemoteAccessAllowed": False,  # HTTP from loopback only
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"cad": [CAD_AET, "127.0.0.1", free_port()]},
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": "127.0.0.1"},
            "SaveJobs": False,
            "HttpThreadsCount": 4,
            "DicomThreadsCount": 2,
            "ConcurrentJobs": 1,
        }

    def start(self) -> Orthanc:
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.root / "orthanc.log", "wb")  # noqa: SIM115 - lives as long as Orthanc
        self.process = subprocess.Popen(
            [str(ORTHANC), str(path)], stdout=log, stderr=subprocess.STDOUT
        )
        while True:  # Orthanc opens its ports within a second or two
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()}")
            try:
                if self.get("/system").ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)

    def get(self, route: str) -> requests.Response:
        return requests.get(self.http + route, auth=(USER, PASSWORD), timeout=30)

    def upload(self, paths) -> list[str]:
        """POST each file to /instances (Orthanc's REST API); returns the instance ids."""
        ids = []
        for path in paths:
            response = requests.post(
                self.http + "/instances",
                data=Path(path).read_bytes(),
                auth=(USER, PASSWORD),
                timeout=30,
            )
            response.raise_for_status()
            ids.append(response.json()["ID"])
        return ids

    def lookup(self, sop_instance_uid: str) -> list[dict]:
        """Orthanc's resources with this UID (/tools/lookup)."""
        response = requests.post(
            self.http + "/tools/lookup", data=sop_instance_uid, auth=(USER, PASSWORD), timeout=30
        )
        response.raise_for_status()
        return response.json()

    def remove(self, paths) -> None:
        """Delete the instances these DICOM files are from (e.g. results a test stored), so
        the session's shared server holds the uploaded export again."""
        import pydicom

        for path in paths:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for hit in self.lookup(uid):
                if hit["Type"] == "Instance":
                    url = f"{self.http}/instances/{hit['ID']}"
                    requests.delete(url, auth=(USER, PASSWORD), timeout=30)

    def clear(self) -> None:
        for patient in self.get("/patients").json():
            requests.delete(f"{self.http}/patients/{patient}", auth=(USER, PASSWORD), timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def dicom_files(root: Path) -> list[Path]:
    """Every file below ``root`` (what is uploaded), sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file())


def orthanc_missing() -> str:
    """Why the Orthanc tests cannot run here ('' when they can)."""
    if not ORTHANC.is_file() or shutil.which(str(ORTHANC)) is None:
        return "Orthanc is not installed (Debian package 'orthanc'; see .ci/services.sh)"
    return ""
