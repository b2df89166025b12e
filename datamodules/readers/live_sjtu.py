"""LIVE-SJTU Audio and Video Quality Assessment database (``live_sjtu``), used by avq and unqa.

``MOS.mat`` at the folder's top holds ``MOS`` (n×1, nominal 0–100), ``disNames`` (n×2: distorted
video ``.yuv``, distorted audio ``.wav``), ``refNames`` (n×2: reference ``.yuv`` and ``.wav``),
``allNames`` (n×3: source, video condition such as ``QP35_S``, audio condition such as
``32kbps``), ``frameRate`` (n×1) and ``resolution`` (1×2: height, width). The release has 336
rows: 14 sources × 8 video conditions × 3 AAC bitrates (8, 32, 128 kb/s). The media files may
be anywhere below the folder. Video and audio are separate files: a stimulus is the pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from avlab.datamodules.readers import ReadOptions, register_reader
from avlab.datamodules.readers.common import cell_str, file_index, finish_rows, load_mat, need

MEDIA_SUFFIXES = (".yuv", ".wav", ".mp4", ".mkv")


@register_reader("live_sjtu", modalities=("av",), mos_range=(0.0, 100.0), score_file="MOS.mat")
def read_live_sjtu(folder: Path, options: ReadOptions) -> pd.DataFrame:
    """One row per stimulus with reference and distorted video and audio (see the module doc)."""
    name = options.score_file or "MOS.mat"
    label = options.label("live_sjtu")
    mat = load_mat(need(folder / name, label), label, ("MOS", "disNames"))
    index = file_index(folder, MEDIA_SUFFIXES)

    def locate(file_name: str) -> str | None:
        return str(index.get(file_name, folder / file_name)) if file_name else None

    mos = np.asarray(mat["MOS"], dtype=float).ravel()
    dis = np.asarray(mat["disNames"], dtype=object)
    ref = np.asarray(mat["refNames"], dtype=object) if "refNames" in mat else None
    all_names = np.asarray(mat["allNames"], dtype=object) if "allNames" in mat else None
    fps = np.asarray(mat.get("frameRate", np.full(len(mos), 25.0)), dtype=float).ravel()
    resolution = np.asarray(mat.get("resolution", [[1080, 1920]]), dtype=float).ravel()
    height, width = int(resolution[0]), int(resolution[1])
    records = []
    for i in range(len(mos)):
        video = cell_str(dis[i][0])
        audio = cell_str(dis[i][1]) if dis.shape[1] > 1 else ""
        if all_names is not None:
            source, vcond, acond = (cell_str(c) for c in all_names[i][:3])
        else:  # distorted names are <Source>_<condition>.yuv / <Source>_<rate>kbps.wav
            source, vcond = Path(video).stem.split("_")[0], "_".join(Path(video).stem.split("_")[1:])
            acond = "_".join(Path(audio).stem.split("_")[1:]) if audio else ""
        rate = "".join(ch for ch in acond if ch.isdigit())
        records.append(
            {
                "stimulus": f"{source}_{vcond}_{acond}" if acond else f"{source}_{vcond}",
                "media": locate(video),
                "audio": locate(audio),
                "reference": locate(cell_str(ref[i][0])) if ref is not None else None,
                "reference_audio": locate(cell_str(ref[i][1]))
                if ref is not None and ref.shape[1] > 1
                else None,
                "mos": float(mos[i]),
                "group": source,
                "where": f"{name} entry {i + 1}",
                "audio_bitrate_kbps": float(rate) if rate else np.nan,
                "video_bitrate_kbps": np.nan,
                "mos_scale": "0-100",
                "height": height,
                "width": width,
                "fps": float(fps[i] if i < len(fps) else fps[-1] if len(fps) else 25.0),
            }
        )
    return finish_rows(records, name)
