"""The HTTP/1.1 protocol ``mri-tumor serve`` runs: uvicorn's h11 protocol, except that a
request the HTTP parser refuses (a non-numeric Content-Length, a broken header or request
line) gets the JSON error body every other error has, ``{"detail": "..."}``, instead of
uvicorn's plain-text "Invalid HTTP request received.".

Such a request never reaches the application (the parser refuses it first), so the answer
is written here. uvicorn would pick httptools when it is installed; the server names this
protocol instead, so that the answer is the same whatever is installed.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from mri_tumor.api.uploads import BAD_LENGTH_DETAIL

MALFORMED_DETAIL = ("Malformed HTTP request (the request line or a header could not be "
                    "parsed); the request was not processed.")
# Where uvicorn.run(http=...) finds the protocol: worker processes import it by this name.
PROTOCOL_PATH = "mri_tumor.api.protocol:JsonErrorsH11Protocol"


def refusal_detail(reason: str) -> str:
    """The ``detail`` for a request the parser refused, from the parser's reason (which is
    not sent: it may quote the request's header values)."""
    return BAD_LENGTH_DETAIL if "content-length" in reason.lower() else MALFORMED_DETAIL


class _NotingConnection(h11.Connection):
    """An h11 server connection that keeps why it last refused the peer's data."""

    refusal = ""

    def next_event(self) -> Any:
        """h11's next event; a refusal's reason is kept before it propagates."""
        try:
            return super().next_event()
        except h11.RemoteProtocolError as error:
            self.refusal = str(error)  # uvicorn drops the reason; the detail needs it
            raise


class JsonErrorsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a JSON 400 for requests the parser refuses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The same connection as uvicorn's (nothing has been received yet), noting refusals.
        self.conn = _NotingConnection(h11.SERVER, self.conn._max_incomplete_event_size)

    def send_400_response(self, msg: str) -> None:
        """Answer 400 with ``{"detail": ...}`` and close the connection."""
        reason = self.conn.refusal if isinstance(self.conn, _NotingConnection) else ""
        body = json.dumps({"detail": refusal_detail(reason)}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode("ascii")),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            data = self.conn.send(event)
            if data:
                self.transport.write(data)
        self.transport.close()
