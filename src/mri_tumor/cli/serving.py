"""Commands that serve a model: ``app``, ``serve`` (HTTP API) and ``pacs`` (run, watch, listen)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mri_tumor.card import DISCLAIMER
from mri_tumor.cli.common import (
    HelpFormatter,
    UsageError,
    add_model,
    log_to_stderr,
    stop_on_signals,
)


def add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the Streamlit web app")
    p.add_argument("--port", type=int, default=8501, help="port to listen on")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    add_model(p)


def run_app(args: argparse.Namespace) -> int:
    check_port_free(args.host, args.port)  # before the model is read or Streamlit started
    from mri_tumor.app.launch import launch_app

    return launch_app(port=args.port, host=args.host, model=args.model)


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the HTTP API (FastAPI on uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own copy of the model")
    add_model(p)


def run_serve(args: argparse.Namespace) -> int:
    check_port_free(args.host, args.port)  # before anything is loaded
    from mri_tumor.api import serve

    return serve(host=args.host, port=args.port, workers=args.workers, model_dir=args.model)


def check_port_free(host: str, port: int) -> None:
    """UsageError (one line, exit status 2) when ``host:port`` cannot be listened on: a port
    in use names itself and ``--port``. Bound the way uvicorn and Streamlit bind (with
    SO_REUSEADDR), then let go. A port out of range is left to the command's own check."""
    import errno
    import socket

    if not 0 < port < 65536:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise UsageError(f"--host {host}: not an address to listen on ({reason})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is already in use: stop what listens "
                                 "there, or choose another port with --port") from None
            raise UsageError(f"cannot listen on {host}:{port} ({error.strerror or error}): "
                             "choose another port with --port, or another --host") from None


def add_pacs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pacs", help="classify MR studies on a PACS and store the results back "
                       "as DICOM", description="Read MR studies from a DICOMweb server (run, "
                       "watch) or receive them by DIMSE C-STORE (listen); write back a "
                       "Structured Report and a Grad-CAM Secondary Capture series, both marked "
                       "unverified and not for diagnosis. Logs name studies by a hash of their "
                       "UID, never by patient data. Research tool, not a diagnosis.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True,
                               prog=p.prog)

    def server_options(action: argparse.ArgumentParser) -> None:
        action.add_argument("--url", required=True, metavar="DICOMWEB_ROOT",
                            help="the server's DICOMweb root, e.g. "
                                 "http://localhost:8042/dicom-web")
        action.add_argument("--user", metavar="USER[:PASSWORD]",
                            help="basic authentication; without :PASSWORD it is read from "
                                 "MRI_TUMOR_PACS_PASSWORD or asked for. A bearer token is "
                                 "read from MRI_TUMOR_PACS_TOKEN instead")

    run = actions.add_parser(
        "run", formatter_class=HelpFormatter, help="process MR studies once",
        description="Classify every MR image of the given studies (default: every MR study "
                    "this model has not processed yet) and store the results into each study. "
                    "Exit 0 when all went well, 1 when a study failed or held unreadable "
                    "images.")
    server_options(run)
    run.add_argument("--study", dest="studies", action="append", default=[], metavar="UID",
                     help="a Study Instance UID; repeat for several")
    run.add_argument("--dry-run", action="store_true",
                     help="classify and print what would be stored, store nothing")
    watch = actions.add_parser(
        "watch", formatter_class=HelpFormatter, help="keep processing new MR studies",
        description="Poll the server and process each new MR study once; remember progress "
                    "in a state file; retry a failing study with growing delays; stop cleanly "
                    "on SIGTERM or Ctrl-C.")
    server_options(watch)
    watch.add_argument("--interval", type=float, default=30.0, metavar="S",
                       help="seconds between polls")
    watch.add_argument("--state", type=Path, metavar="FILE",
                       help="progress file (default: $MRI_TUMOR_HOME/pacs-watch-<hash of the "
                            "URL>.json)")
    listen = actions.add_parser(
        "listen", formatter_class=HelpFormatter, help="receive images by DICOM C-STORE",
        description="A DICOM storage SCP: classify each received series once no image of it "
                    "arrived for --quiet seconds, then C-STORE the report and overlays to "
                    "--send-to. Stops cleanly on SIGTERM or Ctrl-C.")
    listen.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    listen.add_argument("--host", default="127.0.0.1",
                        help="address to listen on: this machine only unless told otherwise; "
                             "another address needs --allow-ae")
    listen.add_argument("--allow-ae", action="append", default=[], metavar="AE",
                        help="a calling AE title that may send (repeat for several); "
                             "associations from others are rejected")
    listen.add_argument("--allow-address", action="append", default=[], metavar="ADDRESS",
                        help="a source IP address that may send (repeat for several; "
                             "default: any that can reach --host)")
    listen.add_argument("--ae-title", default="MRITUMOR", help="this listener's AE title")
    listen.add_argument("--send-to", required=True, metavar="HOST:PORT:AE",
                        help="where the results go (a PACS's storage SCP)")
    listen.add_argument("--quiet", type=float, default=5.0, metavar="S",
                        help="seconds without new images after which a series is complete")
    for action in (run, watch, listen):
        add_model(action)
        action.add_argument("--segment", action="store_true",
                            help="also outline the tumour on each FLAIR series the classifier "
                                 "calls a tumour: a DICOM Segmentation into the study and its "
                                 "volume in the report (read with the study's T1 and T1C+ "
                                 "series of the FLAIR's frame of reference when it has them)")
        action.add_argument("--segmenter", type=Path, metavar="DIR",
                            help="with --segment: a segmentation model folder (default: the "
                                 "shipped FLAIR model, and the FLAIR + T1 + T1C+ model where "
                                 "a study has those series)")


def _pacs_server(args: argparse.Namespace):
    import os

    from mri_tumor.pacs.client import PacsError, PacsServer

    user, password = args.user, None
    if user and ":" in user:
        user, password = user.split(":", 1)
    elif user:
        password = os.environ.get("MRI_TUMOR_PACS_PASSWORD")
        if password is None:
            if not sys.stdin.isatty():
                raise UsageError("--user without a password: set MRI_TUMOR_PACS_PASSWORD or "
                                 "give --user USER:PASSWORD")
            import getpass

            password = getpass.getpass(f"password for {user}: ")
    try:
        return PacsServer.connect(args.url, user=user, password=password,
                                  token=None if user else os.environ.get("MRI_TUMOR_PACS_TOKEN"))
    except PacsError as error:
        raise UsageError(str(error)) from None


def run_pacs(args: argparse.Namespace) -> int:
    from mri_tumor.inference import Predictor
    from mri_tumor.pacs.client import PacsError

    predictor = Predictor.load(args.model)
    if args.segmenter is not None and not args.segment:
        raise UsageError("--segmenter needs --segment")
    outlining = None
    if args.segment:
        from mri_tumor.pacs.study import Outlining

        try:
            outlining = Outlining.load(args.segmenter)
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(f"--segmenter: {error}") from None
    try:
        if args.action == "run":
            return _pacs_run(args, predictor, outlining)
        if args.action == "watch":
            return _pacs_watch(args, predictor, outlining)
        return _pacs_listen(args, predictor, outlining)
    except PacsError as error:
        print(f"mri-tumor pacs {args.action}: error: {error}", file=sys.stderr)
        return 1


def _pacs_run(args: argparse.Namespace, predictor, outlining) -> int:
    from mri_tumor.pacs.client import PacsError
    from mri_tumor.pacs.study import describe, process_study

    server = _pacs_server(args)
    studies = args.studies or server.mr_studies()
    if not studies:
        print("no MR study found on the server")
    failed = 0
    for study_uid in studies:
        try:
            outcome = process_study(server, predictor, study_uid, dry_run=args.dry_run,
                                    outlining=outlining)
        except PacsError as error:
            print(f"mri-tumor pacs run: error: {error}", file=sys.stderr)
            failed += 1
            continue
        for line in describe(outcome, predictor, every_image=args.dry_run):
            print(line)
        failed += bool(outcome.unreadable)
    print(DISCLAIMER)
    return 1 if failed else 0


def _pacs_watch(args: argparse.Namespace, predictor, outlining) -> int:
    import hashlib

    from mri_tumor.inference import registry
    from mri_tumor.pacs.study import WatchState, describe, watch

    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    server = _pacs_server(args)
    path = args.state or registry.home() / (
        f"pacs-watch-{hashlib.sha256(args.url.encode()).hexdigest()[:12]}.json")
    state = WatchState.load(path)
    log_to_stderr()
    stop = stop_on_signals()
    print(f"watching {args.url} every {args.interval:g} s (state: {path}); stop with Ctrl-C. "
          f"{DISCLAIMER}", flush=True)

    def show(outcome) -> None:
        for line in describe(outcome, predictor):
            print(line, flush=True)

    watch(server, predictor, state, interval=args.interval, stop=stop, on_outcome=show,
          outlining=outlining)
    print("stopped; progress saved", flush=True)
    return 0


def _pacs_listen(args: argparse.Namespace, predictor, outlining) -> int:
    from mri_tumor.pacs.listen import listen

    callers = _listen_callers(args)
    destination = _listen_destination(args)
    log_to_stderr()
    stop = stop_on_signals()
    print(f"listening on {args.host}:{args.port} as {args.ae_title} for "
          f"{callers.describe()}; results go to {args.send_to}. {DISCLAIMER}", flush=True)
    listen(predictor, args.port, args.ae_title, destination, stop=stop,
           quiet_seconds=args.quiet, bind_address=args.host, callers=callers,
           on_line=lambda line: print(line, flush=True), outlining=outlining)
    print("stopped", flush=True)
    return 0


def _listen_destination(args: argparse.Namespace):
    """The checked --send-to, --ae-title, --port and --quiet of ``pacs listen``."""
    from mri_tumor.pacs.listen import Destination, check_ae_title

    try:
        destination = Destination.parse(args.send_to)
    except ValueError as error:
        raise UsageError(f"--send-to: {error}") from None
    try:
        check_ae_title(args.ae_title)
    except ValueError as error:
        raise UsageError(f"--ae-title: {error}") from None
    if not 0 < args.port < 65536 or args.quiet <= 0:
        raise UsageError("--port must be 1-65535 and --quiet positive")
    return destination


def _listen_callers(args: argparse.Namespace):
    """Who may send to ``pacs listen``: a listener reachable from other machines must name
    the calling AE titles it accepts."""
    import ipaddress

    from mri_tumor.pacs.listen import Callers, check_ae_title, is_loopback

    for title in args.allow_ae:
        try:
            check_ae_title(title)
        except ValueError as error:
            raise UsageError(f"--allow-ae {title!r}: {error}") from None
    for address in args.allow_address:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise UsageError(f"--allow-address {address!r}: not an IP address") from None
    if not is_loopback(args.host) and not args.allow_ae:
        raise UsageError(f"--host {args.host} lets other machines connect: name the calling "
                         "AE titles that may send with --allow-ae (and their addresses with "
                         "--allow-address)")
    return Callers(tuple(args.allow_ae), tuple(args.allow_address))
