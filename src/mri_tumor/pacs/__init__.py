"""PACS integration: read studies from a DICOMweb server (``client``, ``study``) or receive
them by DIMSE (``listen``), classify their MR images and write the results back as DICOM
(``results``: a Structured Report and Grad-CAM Secondary Captures, both unverified).

highdicom, pynetdicom, dicomweb-client and urllib3 (in URLs) log UIDs, which can identify an
examination, at INFO and DEBUG: whatever logging an application sets up, only their warnings
get through.
"""

import logging

for _name in ("highdicom", "pynetdicom", "dicomweb_client", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)
