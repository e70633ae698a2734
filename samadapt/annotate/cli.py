"""``samadapt annotate``: label a folder of images in the browser, with an adapted SAM proposing masks.

samadapt annotate IMAGES --out annotations.json [--adapter NAME | --model TYPE --checkpoint F]
    [--categories FILE | --annotation-file EXISTING.json] [--host 127.0.0.1] [--port 0] [--no-browser]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError

__all__ = ["add_annotate_arguments", "run_annotate"]

DESCRIPTION = """Label a folder of images in the browser: the model proposes a mask for every box or click.

  samadapt annotate IMAGES --out annotations.json --adapter trashcan-mini --categories classes.json
  samadapt annotate IMAGES --out annotations.json --annotation-file existing.json   # continue a dataset

Starts a local server and prints the page's URL (with its access token). Drag a box, click to add a
positive point, shift-click (or right-click) for a negative one; Enter accepts; 1-9 choose the category;
n / p go to the next / previous image. The COCO file (--out) is written after every change, and running
the command again on it continues it. Details: docs/annotate.md.
"""


def add_annotate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("images", metavar="IMAGES", help="folder of the images (sub-folders included)")
    parser.add_argument("--out", required=True, metavar="FILE.json", help="COCO file to write (continued if it exists)")
    m = parser.add_argument_group("model")
    m.add_argument("--adapter", metavar="NAME_OR_PATH", help="adapter name or file (default: the base model)")
    m.add_argument("--model", default=None, help="base model type without --adapter (default: mini)")
    m.add_argument("--checkpoint", default=None, help="base SAM checkpoint (official vit_* need one)")
    m.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    c = parser.add_argument_group("categories (default: one category, 'object')")
    how = c.add_mutually_exclusive_group()
    how.add_argument(
        "--categories", metavar="FILE", help='JSON list of names (["bottle", "can"]) or of COCO category records'
    )
    how.add_argument(
        "--annotation-file",
        metavar="EXISTING.json",
        help="COCO file giving the categories; its annotations of these images are loaded as accepted",
    )
    s = parser.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    s.add_argument("--no-browser", action="store_true", help="only print the URL, do not open a browser")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    e = parser.add_argument_group("adapt (the page's Adapt button: samadapt engine)")
    e.add_argument("--adapt-epochs", type=int, default=None, help="epochs of each run (default: samadapt engine's)")


def _say(text: str) -> None:
    print(f"annotate: {text}", flush=True)


def _adapter_display_name(adapter: str) -> str:
    """What annotations record for an adapter: its registered name, or its file's name."""
    from ..hub import resolve_adapter
    from ..paths import adapters_dir

    path = resolve_adapter(adapter)
    if path.parent.parent == adapters_dir() or path.name == "adapter.safetensors":
        return path.parent.name
    return path.stem


def load_predictors(args: argparse.Namespace):
    """(the predictor, the base predictor or a function building it or None, a note when None)."""
    import torch

    from ..adapter_io import read_adapter_metadata
    from ..evaluation.run import zero_shot_model
    from ..hub import load, resolve_adapter
    from .session import Predictor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.adapter:
        model_type = args.model or "mini"
        name = model_type if args.checkpoint is None else f"{model_type} ({Path(args.checkpoint).name})"
        model = zero_shot_model(model_type, args.checkpoint, device=device)
        return Predictor(name, model, "base"), None, "no --adapter given: the model is the base model"
    meta = read_adapter_metadata(resolve_adapter(args.adapter))
    model = load(args.adapter, checkpoint=args.checkpoint, device=device)
    name = _adapter_display_name(args.adapter)
    shared = model.encoder_is_frozen  # the encoder is the base's: both models share embeddings
    predictor = Predictor(name, model, "base" if shared else name, source=str(args.adapter))

    def base() -> Predictor:
        base_model = zero_shot_model(model.model_type, args.checkpoint, base_id=meta["base_id"], device=device)
        return Predictor(f"{model.model_type} (base)", base_model, "base")

    return predictor, base, ""


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``<out>.lock`` so two runs never write one file (released by the kernel even on kill -9)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock = out.with_name(f".{out.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise ConfigError(
                f"another `samadapt annotate` (pid {f.read().strip() or '?'}) is writing {str(out)!r}; "
                "use its page, or stop it first"
            ) from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({e})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e}); choose another --port (0: any free one)") from None
    sock.listen(128)
    return sock


def _url(host: str, sock: socket.socket, token: str) -> str:
    port = sock.getsockname()[1]
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/?token={token}"


def _check_model_options(args: argparse.Namespace) -> None:
    """The model options, checked in a moment (no weights read): before any file is written."""
    from ..hub import resolve_adapter
    from ..models.registry import get_model_card

    if args.adapter and args.model:
        raise ConfigError("--model chooses the base model without --adapter; an adapter names its own model type")
    if args.adapter:
        resolve_adapter(args.adapter)
    else:
        get_model_card(args.model or "mini")
    if args.adapt_epochs is not None and args.adapt_epochs < 1:
        raise ConfigError(f"--adapt-epochs must be at least 1, got {args.adapt_epochs}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise ConfigError(f"--checkpoint {args.checkpoint!r} does not exist")


def _report(folder, store, images: str) -> None:
    unreadable = folder.unreadable
    _say(
        f"{len(folder.readable)} images in {images}"
        + (f", {len(unreadable)} unreadable (skipped)" if unreadable else "")
    )
    for name, why in list(unreadable.items())[:10]:
        _say(f"  unreadable {name}: {why}")
    for line in store.report.lines():
        _say(line)


def _serve(app, sock: socket.socket) -> None:
    """Serve until Ctrl-C or SIGTERM. uvicorn stops on either and raises the signal again once stopped:
    both end here as KeyboardInterrupt (nothing is pending then: every change was written when it was
    answered)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def load_adapter_predictor(name: str, args: argparse.Namespace):
    """The :class:`Predictor` of an installed adapter (one an Adapt run made), on the page's device."""
    import torch

    from ..hub import load
    from .session import Predictor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load(name, checkpoint=args.checkpoint, device=device)
    return Predictor(name, model, "base" if model.encoder_is_frozen else name, source=name)


def run_annotate(args: argparse.Namespace) -> int:
    from .adapting import AdaptJob, adapt_router
    from .app import create_app, new_token
    from .folder import ImageFolder
    from .session import AnnotateSession
    from .store import AnnotationStore, read_categories

    out = Path(args.out)
    _check_model_options(args)
    folder = ImageFolder(args.images, progress=not args.no_progress)
    if not folder.readable:
        raise ConfigError(f"no readable image in {args.images!r}: {dict(list(folder.unreadable.items())[:3])}")
    categories = read_categories(args.categories) if args.categories else None
    with _exclusive(out):
        store = AnnotationStore.open(out, folder, categories=categories, annotation_file=args.annotation_file)
        sock = _bind(args.host, args.port)
        try:
            try:
                store.write()  # fails now, not at the first accept, when the file cannot be written
            except OSError as e:
                raise ConfigError(f"cannot write --out {str(out)!r}: {e}") from None
            _report(folder, store, args.images)
            predictor, base, note = load_predictors(args)
            session = AnnotateSession(folder, predictor, base, base_note=note)
            token = new_token()
            if args.host not in ("127.0.0.1", "localhost", "::1"):
                _say(
                    f"warning: --host {args.host} lets other machines reach the page (plain HTTP; the token guards it)"
                )
            _say(f"model {predictor.name} on {predictor.model.device}; writing {out} after every change")
            url = _url(args.host, sock, token)
            _say(f"open {url}")
            if not args.no_browser:
                import webbrowser

                webbrowser.open(url)
            job = AdaptJob(
                session,
                store,
                args.images,
                load=lambda name: load_adapter_predictor(name, args),
                model=args.model,
                checkpoint=args.checkpoint,
                device=args.device,
                epochs=args.adapt_epochs,
            )
            try:
                _serve(create_app(session, store, token, routers=[adapt_router(job)]), sock)
            finally:
                job.close()
                session.close()
        finally:
            sock.close()
        done = len(store.done_names() & set(folder.readable))
        _say(f"stopped; {len(store.annotations)} annotations on {done} of {len(folder.readable)} images in {out}")
    return 0
