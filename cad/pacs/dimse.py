"""The DIMSE client (pynetdicom): C-FIND at study and image level, C-GET, C-STORE.

C-GET returns the instances over the same association (the PACS needs no route back to
us, unlike C-MOVE), so we propose, with the SCP role, a storage context for each SOP
class the study holds and the transfer syntaxes cad decodes: the PACS sends what it
stored or transcodes to one of these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    StudyRootQueryRetrieveInformationModelFind as FIND,
)
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet as GET,
)

from cad.pacs.client import Namer, RemoteStudy
from cad.pacs.credentials import Credentials
from cad.pacs.errors import PacsAuthError, PacsError, PacsUnreachable, StoreError, TransferError
from cad.pacs.query import StudyFilter
from cad.pacs.target import PacsTarget

DECODABLE = [  # what cad's reader decodes (pydicom + pylibjpeg); uncompressed first
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
]
MAX_CONTEXTS = 128  # DICOM's limit on presentation contexts per association
SUCCESS, PENDING = 0x0000, (0xFF00, 0xFF01)


class DimseClient:
    def __init__(self, target: PacsTarget, credentials: Credentials | None, timeout: float):
        self.target = target
        self.credentials = credentials
        self.timeout = timeout

    def _ae(self) -> AE:
        ae = AE(ae_title=self.target.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        return ae

    def _identity(self) -> list:
        if self.credentials is None:
            return []
        identity = UserIdentityNegotiation()  # username and passcode
        identity.user_identity_type = 2
        identity.primary_field = self.credentials.user.encode()
        identity.secondary_field = self.credentials.password.encode()
        return [identity]

    @contextmanager
    def _association(
        self, ae: AE, doing: str, roles: list | None = None, handlers=None
    ) -> Iterator:
        assoc = ae.associate(
            self.target.host,
            self.target.port,
            ae_title=self.target.called_aet,
            ext_neg=[*(roles or []), *self._identity()],
            evt_handlers=handlers or [],
        )
        if assoc.is_rejected:
            raise PacsAuthError(
                f"the PACS at {self.target.url} rejected the association for {doing}; check that "
                f"it knows our calling AE title {self.target.calling_aet} at this host (add it to "
                "the PACS's DICOM modalities / AE list) and that its AE title is "
                f"{self.target.called_aet}"
            )
        if not assoc.is_established:
            raise PacsUnreachable(
                f"the PACS at {self.target.url} cannot be reached for {doing}; check the host and "
                "port, that the PACS is running and that no firewall blocks it"
            )
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _refused(self, doing: str, status: Dataset | None) -> PacsError:
        if status is None or "Status" not in status:  # the peer aborted instead of answering
            return PacsAuthError(
                f"the PACS at {self.target.url} ended the association instead of answering "
                f"{doing}; it may not allow {doing} from calling AE title "
                f"{self.target.calling_aet} (allow it in the PACS's DICOM modalities), or it "
                "stopped"
            )
        return PacsError(
            f"the PACS at {self.target.url} refused {doing} (status 0x{status.Status:04X}); see "
            "the PACS's log"
        )

    def _find(self, assoc, query: Dataset, doing: str) -> list[Dataset]:
        found = []
        status = None
        for status, identifier in assoc.send_c_find(query, FIND):
            if status is None or "Status" not in status:
                raise self._refused(doing, status)
            if status.Status in PENDING and identifier is not None:
                found.append(identifier)
        if status is None or status.Status != SUCCESS:
            raise self._refused(doing, status)
        return found

    def find_studies(self, flt: StudyFilter) -> list[RemoteStudy]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        for keyword in ("StudyInstanceUID", "PatientID", "NumberOfStudyRelatedInstances"):
            setattr(query, keyword, "")
        query.SOPClassesInStudy = ""
        for keyword, value in flt.keys:
            setattr(query, keyword, value)
        ae = self._ae()
        ae.add_requested_context(FIND)
        with self._association(ae, "C-FIND") as assoc:
            found = self._find(assoc, query, f"C-FIND ({flt.label})")
        studies = []
        for ds in found:
            if not ds.get("StudyInstanceUID"):
                continue
            count = ds.get("NumberOfStudyRelatedInstances")
            classes = ds.get("SOPClassesInStudy") or ()
            classes = (classes,) if isinstance(classes, str) else tuple(str(c) for c in classes)
            studies.append(
                RemoteStudy(
                    str(ds.StudyInstanceUID),
                    str(ds.get("PatientID") or ""),
                    int(count) if count not in (None, "") else None,
                    classes,
                )
            )
        return studies

    def _instances(self, study: RemoteStudy) -> list[Dataset]:
        """Image-level C-FIND: SOP instance and class of every instance of the study."""
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study.study_uid
        query.SeriesInstanceUID = query.SOPInstanceUID = query.SOPClassUID = ""
        ae = self._ae()
        ae.add_requested_context(FIND)
        with self._association(ae, "C-FIND") as assoc:
            return self._find(assoc, query, "C-FIND (instances of a study)")

    def count_instances(self, study: RemoteStudy) -> int:
        return len(self._instances(study))

    def retrieve(
        self, study: RemoteStudy, folder: Path, name: Namer, on_file: Callable[[], None]
    ) -> int:
        classes = list(study.sop_classes) or sorted(
            {str(ds.SOPClassUID) for ds in self._instances(study) if ds.get("SOPClassUID")}
        )
        if len(classes) >= MAX_CONTEXTS:
            raise TransferError(
                f"the study holds {len(classes)} SOP classes, more than one association can "
                "negotiate; retrieve it over DICOMweb instead"
            )
        written = [0]

        def on_store(event) -> int:
            sop_uid = str(event.request.AffectedSOPInstanceUID)
            (folder / name(sop_uid)).write_bytes(event.encoded_dataset(include_meta=True))
            written[0] += 1
            on_file()
            return SUCCESS

        ae = self._ae()
        ae.add_requested_context(GET)
        for uid in classes:
            ae.add_requested_context(uid, DECODABLE)
        roles = [build_role(uid, scp_role=True) for uid in classes]
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study.study_uid
        status = None
        with self._association(ae, "C-GET", roles, [(evt.EVT_C_STORE, on_store)]) as assoc:
            for status, _ in assoc.send_c_get(query, GET):
                if status is None or "Status" not in status:
                    break
        if status is None or "Status" not in status:
            raise TransferError(
                f"the connection to the PACS at {self.target.url} broke off during C-GET after "
                f"{written[0]} instances; rerun to retrieve the study again"
            )
        failed = int(status.get("NumberOfFailedSubOperations") or 0)
        if status.Status != SUCCESS or failed:
            raise TransferError(
                f"the PACS at {self.target.url} ended C-GET with status 0x{status.Status:04X} "
                f"({failed} instances failed) after {written[0]} instances; see the PACS's log"
            )
        return written[0]

    def store(self, path: Path) -> None:
        try:
            ds = pydicom.dcmread(path)
            sop_class, syntax = ds.SOPClassUID, ds.file_meta.TransferSyntaxUID
        except (InvalidDicomError, OSError, ValueError, AttributeError) as exc:
            raise StoreError(f"not a readable DICOM file ({type(exc).__name__})") from None
        ae = self._ae()
        ae.add_requested_context(sop_class, list(dict.fromkeys([syntax, ExplicitVRLittleEndian])))
        with self._association(ae, "C-STORE") as assoc:
            if not assoc.accepted_contexts:
                raise StoreError(f"the PACS does not accept this SOP class ({sop_class.name})")
            status = assoc.send_c_store(ds)
        if status is None or "Status" not in status:
            raise StoreError("the association ended before the PACS answered C-STORE")
        if status.Status not in (SUCCESS, 0xB000, 0xB007, 0xB006):
            raise StoreError(f"the PACS refused the instance (status 0x{status.Status:04X})")

    def close(self) -> None:
        pass
