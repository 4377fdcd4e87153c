"""The web app: a Streamlit page (``page``, run by ``mri-tumor app``), its whole-scan part
(``scans``) and the process that runs it (``launch``). Importing this package imports neither
Streamlit nor torch."""
