"""The DICOMweb client: QIDO-RS search, WADO-RS retrieve, STOW-RS store (dicomweb-client).

Requests exceptions are never quoted in messages: their text holds the request URL,
whose query string carries patient IDs or accession numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.errors import InvalidDicomError

from cad.pacs.client import Namer, RemoteStudy
from cad.pacs.credentials import Credentials
from cad.pacs.errors import (
    PacsAuthError,
    PacsError,
    PacsQueryError,
    PacsUnreachable,
    StoreError,
    TransferError,
)
from cad.pacs.query import StudyFilter
from cad.pacs.target import PacsTarget

STUDY_UID, PATIENT_ID, N_INSTANCES = "0020000D", "00100020", "00201208"
AS_STORED = (("application/dicom", "*"),)  # WADO-RS: the stored transfer syntax, no transcoding


def _value(item: dict, tag: str) -> object:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


class DicomWebClient:
    def __init__(self, target: PacsTarget, credentials: Credentials | None, timeout: float):
        self.target = target
        self.credentials = credentials
        session = requests.Session()
        if credentials is not None:
            session.auth = (credentials.user, credentials.password)
        self.web = DICOMwebClient(target.url, session=session, timeout=timeout)
        # dicomweb-client retries every failure 5 times (30 s of back-off on a refused
        # connection); 3 attempts over 3 s still ride out a busy PACS's 503
        self.web.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=500)

    def _http(self, exc: Exception, doing: str) -> PacsError:
        """A requests failure -> the typed error with the fix (never the URL or reply)."""
        where = f"the PACS at {self.target.url}"
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status in (401, 403):
                who = (
                    f"user from {self.credentials.source}" if self.credentials else "no credentials"
                )
                return PacsAuthError(
                    f"{where} refused {doing} (HTTP {status}, {who}); check CAD_PACS_USER / "
                    "CAD_PACS_PASSWORD or the file CAD_PACS_CREDENTIALS names, and that the "
                    "user may read (and, to send results, store) studies"
                )
            if status == 404:
                return PacsError(
                    f"{where} has no DICOMweb service at this URL (HTTP 404 while {doing}); "
                    "pass the DICOMweb root, e.g. http://host:8042/dicom-web"
                )
            return PacsError(f"{where} failed {doing} (HTTP {status}); see the PACS's log")
        if isinstance(exc, requests.ConnectionError | requests.Timeout):
            return PacsUnreachable(
                f"{where} cannot be reached while {doing} ({type(exc).__name__}); check the "
                "host and port, that the PACS is running and that no firewall blocks it"
            )
        return PacsError(f"{where}: {doing} failed ({type(exc).__name__})")

    def find_studies(self, flt: StudyFilter) -> list[RemoteStudy]:
        try:
            found = self.web.search_for_studies(
                search_filters=flt.as_dict(),
                fields=["PatientID", "NumberOfStudyRelatedInstances"],
                get_remaining=True,
            )
        except requests.RequestException as exc:
            raise self._http(exc, f"the study search ({flt.label})") from None
        except ValueError:
            raise PacsQueryError(
                f"the PACS at {self.target.url} answered the study search ({flt.label}) with "
                "something that is not DICOM JSON; check that the URL is the DICOMweb root"
            ) from None
        studies = []
        for item in found:
            uid = _value(item, STUDY_UID)
            if uid:
                count = _value(item, N_INSTANCES)
                instances = int(str(count)) if count is not None else None
                studies.append(
                    RemoteStudy(str(uid), str(_value(item, PATIENT_ID) or ""), instances)
                )
        return studies

    def count_instances(self, study: RemoteStudy) -> int:
        try:
            return len(
                self.web.search_for_instances(
                    study_instance_uid=study.study_uid, fields=["SOPClassUID"], get_remaining=True
                )
            )
        except requests.RequestException as exc:
            raise self._http(exc, "the instance search") from None

    def retrieve(
        self, study: RemoteStudy, folder: Path, name: Namer, on_file: Callable[[], None]
    ) -> int:
        written = 0
        try:
            for ds in self.web.iter_study(study.study_uid, media_types=AS_STORED):
                pydicom.dcmwrite(
                    folder / name(str(ds.SOPInstanceUID)), ds, enforce_file_format=True
                )
                written += 1
                on_file()
        except requests.RequestException as exc:
            error = self._http(exc, "a study retrieval (WADO-RS)")
            if isinstance(error, PacsUnreachable | PacsAuthError):
                raise error from None
            raise TransferError(f"{error}; after {written} instances") from None
        except (InvalidDicomError, AttributeError, ValueError, OSError) as exc:
            raise TransferError(
                f"the PACS at {self.target.url} sent an instance that cannot be stored "
                f"({type(exc).__name__}) after {written} instances; rerun to retry the study"
            ) from None
        return written

    def store(self, path: Path) -> None:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise StoreError(f"not a readable DICOM file ({type(exc).__name__})") from None
        try:
            reply = self.web.store_instances([ds])
        except requests.RequestException as exc:
            error = self._http(exc, "storing a file (STOW-RS)")
            if isinstance(error, PacsUnreachable | PacsAuthError):
                raise error from None
            raise StoreError(str(error)) from None
        failed = reply.get("FailedSOPSequence") if reply is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "unknown")
            raise StoreError(f"the PACS refused the instance (failure reason {reason})")

    def close(self) -> None:
        self.web._session.close()
