"""``samadapt annotate``: a local web page to label images with an adapted SAM (docs/annotate.md).

The pieces, one concern each:

- :mod:`.folder`: the images folder (listing, sizes, the only paths a client name can reach);
- :mod:`.store`: the COCO file, written atomically after every change and continued on the next run;
- :mod:`.session`: the models (each image encoded once, the next in the background; a prompt costs
  the decoder only), the draft of the object being drawn, undo, accept, the base model beside it;
- :mod:`.app`: the FastAPI app (token, bounded requests, the JSON API, the page);
- :mod:`.serve`: what the command runs (model loading, the lock on the file, the uvicorn server; its
  options: :mod:`samadapt.cli.annotate`);
- ``static/``: the page (plain HTML, JavaScript and CSS shipped with the package; no build step).

Extending it (the data engine of issue 23): :meth:`AnnotateSession.swap` puts a new model in,
``create_app(..., routers=[...])`` mounts more routes behind the same token, and the page's toolbar
takes more buttons (``static/app.js``).

The names are imported on first use, so ``samadapt --help`` (which builds this command's options)
does not import FastAPI or torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "create_app": "app",
    "new_token": "app",
    "ImageFolder": "folder",
    "AnnotateSession": "session",
    "Predictor": "session",
    "refine": "session",
    "AnnotationStore": "store",
    "read_categories": "store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
