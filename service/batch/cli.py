"""``msdn segment INPUT... -o OUT``: the ``/segment`` pipeline over many studies (``docs/cli.md``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="DICOM folders, zips, NIfTI/NRRD/.npy files or JSON manifests")
    parser.add_argument("-o", "--out", required=True, help="output folder (one sub-folder per study, summary.csv)")
    parser.add_argument(
        "--format",
        action="append",
        choices=["seg", "nifti", "json"],
        help="output format (repeatable; default seg and json; json is always written)",
    )
    parser.add_argument("--preview", action="store_true", help="also write preview.png per study")
    parser.add_argument("--boxes", help="a JSON file of boxes in the API's dialect (applies to every study)")
    parser.add_argument("--reference", help="reference mask (NIfTI, NRRD, .npy, DICOM SEG) for Dice/IoU/HD95")
    parser.add_argument("--mode", default="auto", choices=["auto", "boxes", "proposals", "slices"])
    parser.add_argument("--model", help="ONNX model (MSDN_MODEL_PATH; default models/default.onnx)")
    parser.add_argument("--spacing", help="voxel spacing 'sz,sy,sx' (mm) for .npy inputs")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each loads the model)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per worker (0: default)")
    parser.add_argument("--url", help="send the studies to this running msdn service instead")
    parser.add_argument("--api-key", help="API key for --url")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from service.batch.inputs import find_studies
    from service.batch.runner import BatchOptions, run_batch

    if args.workers < 1:
        logger.error("--workers must be >= 1")
        return 2
    formats = list(dict.fromkeys(args.format or ["seg", "json"]))
    if args.preview:
        formats.append("png")
    boxes = Path(args.boxes).read_text() if args.boxes else None
    try:
        studies = find_studies(args.inputs)
    except FileNotFoundError as exc:
        logger.error("%s", exc)
        return 2
    options = BatchOptions(
        out=Path(args.out),
        formats=formats,
        mode=args.mode,
        boxes=boxes,
        reference=args.reference,
        spacing=args.spacing,
        url=args.url,
        api_key=args.api_key,
        threads=args.threads,
    )
    if args.url:
        options.model_sha256 = _remote_sha(args.url, args.api_key)
    else:
        from service.model import read_card  # noqa: F401 - fail early without the serve extra
        from service.settings import Settings

        settings = Settings(**({"model_path": args.model} if args.model else {}))
        options.model = settings.model_path
        from msdn_core.digest import file_sha256

        if not Path(settings.model_path).is_file():
            logger.error("model %s not found (--model or MSDN_MODEL_PATH)", settings.model_path)
            return 2
        options.model_sha256 = file_sha256(settings.model_path)
    logger.info("%d studies -> %s (formats %s, %d worker(s))", len(studies), options.out, formats, args.workers)
    rows = run_batch(studies, options, workers=args.workers, progress=not args.no_progress)
    failed = [r for r in rows if r.get("error_code")]
    logger.info("%d done, %d failed; summary: %s", len(rows) - len(failed), len(failed), options.out / "summary.csv")
    return 1 if failed else 0


def _remote_sha(url: str, api_key: str | None) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(url.rstrip("/") + "/v1/model", headers=headers, timeout=30)
    response.raise_for_status()
    return str(response.json().get("sha256", ""))
