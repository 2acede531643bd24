"""PACS transport: query and retrieve studies for ``cad score --pacs``, receive them
(``cad listen``), store result objects back (``cad pacs send``).

- ``target``: the PACS named by a URL (DICOMweb ``http(s)://...`` or DIMSE ``dicom://``)
- ``credentials``: user and password from the environment or a 0600 file, never logged
- ``query``: which studies (date range, accession list, patient pseudonym map)
- ``dicomweb`` / ``dimse``: the two clients (dicomweb-client, pynetdicom), one interface
- ``staging``: the private folder retrieved studies land in, complete or absent
- ``fetch``: query, skip what is staged, retrieve the rest with a typed outcome per study
- ``score``: fetch, then score the staged folder with :func:`cad.scoring.api.score_folder`
- ``send``: store DICOM files (STOW-RS or C-STORE) with a typed error per failed file
- ``receiver`` / ``scorer`` / ``ledger`` / ``listen``: ``cad listen``, a C-STORE receiver
  that stages each study as it arrives and scores it with ``score_folder``, appending to
  the outputs
- ``cli``: the typer options and the ``cad pacs send`` command
"""
