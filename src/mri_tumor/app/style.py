"""The page's few style rules: texts that Streamlit would cut with an ellipsis (a long class
name in a result's headline, the sidebar's model names and table) wrap instead, and the
uploader's own size line (Streamlit's cap, not the app's limit) is hidden: the caption under
the uploader gives the app's limit, and a file over it gets an error card.

The rules select Streamlit's ``data-testid`` attributes; ``tests/test_browser.py`` checks in
Chromium, at three window widths, that nothing is cut.
"""

from __future__ import annotations

import streamlit as st

PAGE_CSS = """<style>
[data-testid="stMetricValue"], [data-testid="stMetricValue"] *,
[data-testid="stMetricLabel"], [data-testid="stMetricLabel"] * {
  white-space: normal !important; overflow: visible !important;
  text-overflow: clip !important; overflow-wrap: break-word;
}
[data-testid="stMetricValue"] {
  height: auto !important; line-height: 1.2; font-size: clamp(1.5rem, 2.4vw, 2.25rem);
}
[data-testid="stCheckbox"] [data-testid="stWidgetLabel"] * {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
}
[data-testid="stSidebar"] [data-testid="stRadio"] label,
[data-testid="stSidebar"] [data-testid="stRadio"] label * {
  white-space: normal !important; overflow-wrap: break-word;
}
[data-testid="stSidebar"] table { width: 100%; table-layout: auto; }
[data-testid="stSidebar"] th, [data-testid="stSidebar"] td {
  white-space: normal !important; overflow-wrap: break-word;
}
[data-testid="stFileUploaderDropzoneInstructions"] { display: none; }
</style>"""


def apply_page_style() -> None:
    """Send the style rules (they take no room on the page)."""
    st.html(PAGE_CSS)
