"""Reading DICOM: one vocabulary of outcomes, one header parse per file, one study reader,
one worker pool. Ingest, ``cad data check`` and ``cad score`` all read through here.

- ``outcome``: the complete ``Outcome`` enum, typed decode errors, PHI-free reasons
- ``files``: the folder walk; special, unreadable and side files
- ``header``: ``read_header`` -> ``FileRecord`` (one parse per file, plausibility checks)
- ``frames``: per-frame geometry, timing and modality LUT values from a header
- ``pixels``: locating pixel data, bounded inflation, ``decode`` (one read per file)
- ``series``: frames of one series sorted into volumes
- ``phases``: DCE phase naming and ordering
- ``study``: grouping by study, duplicate instances, ``load_study``
- ``reader``: the study reader: a list of files, a folder or header records -> studies
- ``index``: the header pass over many files in worker processes -> study tasks
- ``check``: ``cad data check``
- ``pool``: the crash-isolating forkserver worker pool
"""

from cad.io.header import FileRecord, read_header
from cad.io.outcome import CodecError, CorruptError, DecodeError, Outcome
from cad.io.pixels import decode
from cad.io.reader import Decode, StudyRead, read_files, read_folder, read_records

__all__ = [
    "CodecError",
    "CorruptError",
    "Decode",
    "DecodeError",
    "FileRecord",
    "Outcome",
    "StudyRead",
    "decode",
    "read_files",
    "read_folder",
    "read_header",
    "read_records",
]
