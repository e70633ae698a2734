"""How long the annotation page waits for a mask after a click (``samadapt annotate``), on the CPU.

An annotator is simulated on real TrashCan frames (val split, imported from ../shared/realdata/trashcan;
generated 480x270 frames with random boxes where it is absent): per object, a box (its tight box), then
corrective clicks chosen by the click protocol (``samadapt.evaluation.clicks.next_click``), each decoded
with the previous logits fed back, each a JSON ``POST /api/prompt`` to the real app (``create_app``) on
uvicorn, as the page sends it. Timed:

- ``round trip``: from the request to the parsed answer (HTTP, JSON, the server's work): what the page
  waits for after a click;
- ``decode``: the server's own time for the click, as the page's status line shows it (prompt encoder,
  mask decoder, upsampling to the image; ``samadapt.annotate.session.refine``);
- ``encode``: the image embedding, once per image (paid when the page opens an image that the
  background thread has not encoded yet).

Each model runs in a fresh process per torch thread count (torch's default, and 1), the way the command
runs: a thread count is fixed before the server's threads start.

Models: the built-in ``mini``; ViT-B at 1024 px with random weights (official architecture: timing only,
its masks mean nothing). Targets (issue 22): the median answer to a click <= 100 ms with ``mini`` on a
2-core CPU, <= 300 ms with ViT-B at 1024 px; judged on the round trip at torch's default thread count.

    python benchmarks/annotate_latency.py             # mini + ViT-B, about 10 minutes on a busy 2-core CPU
    python benchmarks/annotate_latency.py --smoke --out /tmp/bench   # mini, one frame: a minute
    python benchmarks/annotate_latency.py --models mini --out /tmp/bench   # mini only

Writes ``<out>/annotate_latency-cpu.json`` (``--out``, default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import _common as C  # noqa: E402

import samadapt  # noqa: E402
from samadapt.annotate.app import create_app  # noqa: E402
from samadapt.annotate.folder import ImageFolder  # noqa: E402
from samadapt.annotate.session import AnnotateSession, Predictor, mask_runs  # noqa: E402
from samadapt.annotate.store import AnnotationStore  # noqa: E402
from samadapt.evaluation.clicks import next_click  # noqa: E402

TRASHCAN = HERE.parent.parent / "shared" / "realdata" / "trashcan"
PLANS = {
    "quick": {"models": ["mini", "vit_b"], "frames": {"mini": 6, "vit_b": 1}, "objects": 3, "clicks": 4},
    "smoke": {"models": ["mini"], "frames": {"mini": 1}, "objects": 2, "clicks": 2},
}
TOKEN = "benchmark"


# ---------------------------------------------------------------------------- frames
def _frames(n: int, work: Path) -> tuple[Path, dict[str, list[np.ndarray]], str]:
    """A folder of ``n`` frames and per frame its ground-truth masks (largest first)."""
    folder = work / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    if (TRASHCAN / "original_data").is_dir():
        from pycocotools.coco import COCO

        from samadapt.data.importers import import_trashcan

        names = [ln.strip() for ln in (TRASHCAN / "splits" / "instance_val.txt").read_text().splitlines()]
        names = [f for f in names if (TRASHCAN / "original_data" / "annotations" / f"{f}.json").is_file()][::97][:n]
        import_trashcan(TRASHCAN, work / "coco", versions=["instance"], images="copy", frames=names, progress=False)
        coco = COCO(str(work / "coco" / "instance_version" / "instances_val_trashcan.json"))
        objects = {}
        for image_id, info in coco.imgs.items():
            shutil.copy(work / "coco" / "instance_version" / "val" / info["file_name"], folder)
            masks = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
            objects[info["file_name"]] = sorted(masks, key=lambda m: -int(m.sum()))
        return folder, objects, f"{len(objects)} TrashCan val frames (every 97th of the split list), their objects"
    from PIL import Image

    images, boxes = C.random_images(n, sizes=((270, 480),), boxes_per_image=4)
    objects = {}
    for k, (image, bxs) in enumerate(zip(images, boxes)):
        name = f"frame{k:03d}.png"
        Image.fromarray(image).save(folder / name)
        masks = []
        for x0, y0, x1, y1 in bxs.astype(int):  # the box interiors stand in for objects
            m = np.zeros(image.shape[:2], bool)
            m[y0:y1, x0:x1] = True
            masks.append(m)
        objects[name] = masks
    return folder, objects, f"{n} generated 480x270 frames, box interiors as objects (no TrashCan data found)"


def _model(model_type: str):
    if model_type == "mini":
        return samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval(), "mini (built-in weights)"
    return samadapt.adapt(C.build_variant(model_type, seed=0), "decoder").eval(), f"{model_type} (random weights)"


# ---------------------------------------------------------------------------- the simulated annotator
def _serve(session, store):
    """The real app on uvicorn in a thread: (port, stop)."""
    import uvicorn

    from samadapt.annotate.serve import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    config = uvicorn.Config(
        create_app(session, store, TOKEN), log_level="warning", lifespan="off", timeout_keep_alive=3600
    )  # one connection throughout, as a browser keeps it: no idle timeout while an encoder runs between clicks
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()

    return sock.getsockname()[1], stop


def _post(conn, path: str, body: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    conn.request("POST", f"{path}?token={TOKEN}", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {data}")
    return time.perf_counter() - start, data


def _upstream(model, embedding: torch.Tensor, size: tuple[int, int]):
    """Upstream ``SamPredictor`` on the same image embedding: the baseline every SAM labelling tool pays
    per prompt (prompt encoder, mask decoder, masks upsampled to the image)."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(model.sam)
    predictor.features = embedding[None]
    predictor.original_size = tuple(size)
    predictor.input_size = tuple(model.transform.input_size(size))
    predictor.is_image_set = True
    return predictor


def _upstream_predict(predictor, prompts: list[dict], previous: torch.Tensor) -> tuple[float, np.ndarray]:
    """(seconds, mask) of ``SamPredictor.predict`` for the latest box, every point and the previous logits."""
    box = [p["box"] for p in prompts if "box" in p][-1:]
    points = [p for p in prompts if "point" in p]
    start = time.perf_counter()
    masks, _, _ = predictor.predict(
        point_coords=np.asarray([p["point"] for p in points], np.float32) if points else None,
        point_labels=np.asarray([int(p["positive"]) for p in points]) if points else None,
        box=np.asarray(box[0], np.float32) if box else None,
        mask_input=previous[0].float().numpy(),
        multimask_output=False,
    )
    return time.perf_counter() - start, masks[0]


def _annotate(conn, session, name: str, gt: np.ndarray, clicks: int, timings: dict[str, list[float]], checks):
    """A box, then up to ``clicks`` corrective clicks, as the page sends them. Per click: the round trip
    and the server's decode time, and upstream SamPredictor's time for the same prompts right after
    (``timings``); whether the mask answered equals the session's, and its IoU with upstream's (``checks``)."""
    _post(conn, "/api/clear", {"image": name})
    ys, xs = np.nonzero(gt)
    box = [int(xs.min()), int(ys.min()), int(xs.max() + 1), int(ys.max() + 1)]
    _post(conn, "/api/prompt", {"image": name, "box": box})
    embedded, _ = session.cache.get(session.predictor, name)
    upstream = _upstream(session.predictor.model, embedded.embedding, embedded.size)
    for _ in range(clicks):
        click = next_click(gt, session.draft.outputs[session.predictor.name][-1].mask)
        if click is None:
            break
        row, col, positive = click
        seconds, data = _post(
            conn, "/api/prompt", {"image": name, "point": [col + 0.5, row + 0.5], "positive": positive}
        )
        outputs = session.draft.outputs[session.predictor.name]
        timings["round_trip"].append(seconds)
        timings["decode"].append(data["draft"]["decode_ms"] / 1000)
        with torch.no_grad():
            up_seconds, up_mask = _upstream_predict(upstream, session.draft.prompts, outputs[-2].logits)
        timings["upstream"].append(up_seconds)
        checks["same"].append(data["draft"]["mask"] == mask_runs(outputs[-1].mask))
        union = np.logical_or(up_mask, outputs[-1].mask).sum()
        checks["upstream_iou"].append(float(np.logical_and(up_mask, outputs[-1].mask).sum() / union) if union else 1.0)


def worker(model_type: str, plan: dict[str, Any], threads: int) -> dict[str, Any]:
    """One model at one thread count, in this (fresh) process: the timings in seconds."""
    torch.set_num_threads(threads)  # before any worker thread exists: the server's threads use it too
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder_path, objects, what = _frames(plan["frames"][model_type], work)
        model, model_what = _model(model_type)
        folder = ImageFolder(folder_path, progress=False)
        store = AnnotationStore.open(work / "out.json", folder)
        session = AnnotateSession(folder, Predictor(model_type, model, "base"))
        timings: dict[str, list[float]] = {"round_trip": [], "decode": [], "upstream": [], "encode": []}
        checks: dict[str, list] = {"same": [], "upstream_iou": []}
        port, stop = _serve(session, store)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)  # ViT-B encodes for minutes on a busy CPU
        try:
            for name in folder.readable:
                _post(conn, "/api/open", {"image": name})
                session.cache.wait()  # the next image too: the clicks get the CPU to themselves
                timings["encode"].append(session.cache.get(session.predictor, name)[0].seconds)
                for gt in objects[name][: plan["objects"]]:
                    _annotate(conn, session, name, gt, plan["clicks"], timings, checks)
        finally:
            conn.close()
            stop()
            session.close()
    size = f"{model.sam.image_encoder.img_size} px input"
    return {"model": f"{model_what}, {size}", "frames": what, "timings": timings, "threads": threads, **checks}


def _worker_in_subprocess(model_type: str, mode: str, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", model_type, "--threads", str(threads)] + (
        ["--smoke"] if mode == "smoke" else []
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(C.RESULT_TAG):
            return json.loads(line[len(C.RESULT_TAG) :])
    raise RuntimeError(f"worker {model_type} x {threads} threads failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _row(result: dict[str, Any], what: str, walls: list[float]) -> dict[str, Any]:
    return {
        "model": result["model"],
        "what": what,
        "threads": result["threads"],
        "median_ms": round(1000 * statistics.median(walls), 1),
        "min_ms": round(1000 * min(walls), 1),
        "p90_ms": round(1000 * float(np.percentile(walls, 90)), 1),
        "n": len(walls),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="mini only, one frame")
    ap.add_argument("--models", nargs="+", choices=PLANS["quick"]["models"], help="only these (default: all)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # a model type: measure it in this process
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    mode = "smoke" if args.smoke else "quick"
    plan = PLANS[mode]
    if args.models and not args.worker:
        plan = {**plan, "models": [m for m in plan["models"] if m in args.models]}
    if args.worker:
        C.emit(worker(args.worker, plan, args.threads))
        return 0
    default_threads = torch.get_num_threads()
    counts = sorted({default_threads, 1}, reverse=True)
    bench_args = SimpleNamespace(
        device="cpu",
        dtype="fp32",
        out=args.out,
        threads_note=f"each model measured in a fresh process per thread count: torch's default ({default_threads}) and 1",
    )
    bench = C.Bench("annotate_latency", bench_args, mode)
    bench.data["command"] = " ".join(
        ["python benchmarks/annotate_latency.py", *(argv if argv is not None else sys.argv[1:])]
    )
    bench.data["setup"] = {
        "plan": plan,
        "variants": [C.describe_variant(m) for m in plan["models"]],
        "protocol": "per object: its tight box, then corrective clicks at the centre of the largest error region "
        "(samadapt.evaluation.clicks.next_click), previous logits fed back, each a POST /api/prompt to the app on "
        "uvicorn in the same process; 'decode' is the server's own time for the click (prompt encoder, mask "
        "decoder, upsampling, the mask's runs), 'round trip' adds HTTP and JSON as the page sees it",
    }
    rows = []
    for model_type in plan["models"]:
        results = {threads: _worker_in_subprocess(model_type, mode, threads) for threads in counts}
        for threads, result in results.items():
            bench.check(
                f"{model_type} x {threads} thread(s): every mask answered equals the session's",
                bool(result["same"]) and all(result["same"]),
                n=len(result["same"]),
            )
            bench.check(
                f"{model_type} x {threads} thread(s): the masks equal upstream SamPredictor's for the same prompts "
                "(IoU >= 0.99)",
                min(result["upstream_iou"]) >= 0.99,
                min_iou=round(min(result["upstream_iou"]), 5),
                exact=sum(v == 1.0 for v in result["upstream_iou"]),
                n=len(result["upstream_iou"]),
            )
            rows += [
                _row(result, "round trip of a click (HTTP, JSON)", result["timings"]["round_trip"]),
                _row(result, "decode after a click (server)", result["timings"]["decode"]),
                _row(result, "upstream SamPredictor.predict, same prompts", result["timings"]["upstream"]),
                _row(result, "image embedding (once per image)", result["timings"]["encode"]),
            ]
            ratio = statistics.median(d / u for d, u in zip(result["timings"]["decode"], result["timings"]["upstream"]))
            bench.data["summary"][f"{model_type} x {threads}: decode / upstream, median of the per-click ratios"] = (
                round(ratio, 3)
            )
        bench.data["setup"].setdefault("frames", {})[model_type] = results[counts[0]]["frames"]
        limit = 100 if model_type == "mini" else 300
        medians = {
            t: r["median_ms"]
            for t in counts
            for r in rows
            if r["threads"] == t and r["what"].startswith("round") and r["model"] == results[t]["model"]
        }
        bench.target(
            f"{model_type}: median answer to a click (round trip)",
            f"<= {limit} ms",
            medians,
            medians[default_threads] <= limit,
            f"met judged at torch's default {default_threads} thread(s); the 1-thread run is beside it",
        )
    bench.table(
        "latency of the annotation page, milliseconds",
        ["model", "what", "threads", "median_ms", "min_ms", "p90_ms", "n"],
        rows,
    )
    bench.write()
    for t in bench.data["targets"]:
        print(f"target {t['name']}: {t['target']} -> {t['value']} ({'met' if t['met'] else 'NOT met'})")
    return 0 if bench.passed else 1


if __name__ == "__main__":
    sys.exit(main())
