"""Helpers of the web-interface tests: phantom files, a synthetic DICOM series, a real ``defacer serve`` process."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np

REPO = Path(__file__).resolve().parents[2]
#: Screenshots of the browser tests (synthetic phantom only; build/ is git-ignored).
ARTEFACTS = REPO / "build" / "web-artefacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@dataclass(frozen=True)
class PhantomFiles:
    """Files written from the synthetic 2 mm head phantom."""

    scan: Path
    labels: Path
    nrrd: Path
    nrrd_labels: Path
    mgz: Path
    garbage: Path
    truncated: Path
    dicom_zip: Path
    dicom_files: list[Path]


#: Planted in the synthetic DICOM series so tests can check it never reaches logs or downloads.
PLANTED_NAME = "Doe^Jane"


def write_dicom_phantom(folder: Path, volume: object) -> list[Path]:
    """Write an RAS phantom volume as an axial DICOM series (one file per slice) with planted PHI."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    data = np.asarray(volume.raw)  # type: ignore[attr-defined]
    affine = np.asarray(volume.affine, dtype=float)  # type: ignore[attr-defined]
    nx, ny, nz = data.shape
    dx, dy, dz = (float(np.linalg.norm(affine[:3, c])) for c in range(3))
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PLANTED_NAME, "MRN-0042", "19700101"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.StudyDate = ds.SeriesDate = "20240102"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # rows towards L, columns towards P
        ras = affine @ np.array([nx - 1, ny - 1, k, 1.0])
        ds.ImagePositionPatient = [float(-ras[0]), float(-ras[1]), float(ras[2])]
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        pixels = np.ascontiguousarray(data[::-1, ::-1, k].T.astype(np.int16))
        ds.PixelData = pixels.tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass
class Server:
    """A ``defacer serve`` process on 127.0.0.1."""

    url: str
    work_dir: Path
    process: subprocess.Popen[str]


def start_server(work_dir: Path, *extra: str, hang_up_ignored: bool = False) -> Server:
    """Run ``defacer serve`` in a subprocess and wait for the address it prints.

    The server starts with SIGHUP at its default, as from a terminal, whatever the test run inherited (a CI job
    started under ``nohup`` ignores it, and a process started ignoring it keeps ignoring it), or ignoring it as
    under ``nohup`` with ``hang_up_ignored``.
    """
    hang_up = "signal.SIG_IGN" if hang_up_ignored else "signal.SIG_DFL"
    command = [sys.executable, "-c",
               (f"import signal, sys; signal.signal(signal.SIGHUP, {hang_up}); from defacer.cli.main import main; "
                "sys.exit(main(sys.argv[1:]))"),
               "serve", "--work-dir", str(work_dir), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise RuntimeError(f"defacer serve exited early: {process.stderr.read() if process.stderr else ''}")
        match = re.search(r"serving on (http://\S+)", line)
        if match:
            return Server(match.group(1), work_dir, process)
    process.kill()
    raise RuntimeError("defacer serve did not print its address within 60 s")


def stop_server(server: Server) -> str:
    """Stop with Ctrl+C (SIGINT) as a user would; return stderr."""
    import signal

    server.process.send_signal(signal.SIGINT)
    try:
        _, err = server.process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        _, err = server.process.communicate()
    return err or ""




def decode_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB or RGBA PNG (as Chromium writes screenshots) into an (H, W, 3) uint8 array.

    Uses Pillow when installed (the ``verify`` extra), else a small pure-numpy decoder.
    """
    import io
    import struct
    import zlib

    import numpy as np

    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), f"unsupported PNG (depth {depth}, colour type {colour})"
    channels = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8).reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), dtype=np.int32)
    previous = np.zeros(width * channels, dtype=np.int32)
    for row in range(height):
        kind, line = raw[row, 0], raw[row, 1:].astype(np.int32)
        current = np.zeros_like(line)
        if kind == 0:
            current = line
        elif kind == 2:
            current = (line + previous) & 255
        else:  # Sub, Average, Paeth depend on the left neighbour: decode pixel by pixel
            for x in range(line.size):
                left = current[x - channels] if x >= channels else 0
                up = previous[x]
                upper_left = previous[x - channels] if x >= channels else 0
                if kind == 1:
                    predictor = left
                elif kind == 3:
                    predictor = (left + up) // 2
                else:
                    p = left + up - upper_left
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
                    predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else upper_left)
                current[x] = (line[x] + predictor) & 255
        out[row] = current
        previous = current
    return out.reshape(height, width, channels)[:, :, :3].astype(np.uint8)


def feature_pixels(image: np.ndarray) -> dict[str, int]:
    """Count screen pixels dominated by each overlay colour (red eyes, green nose, blue ears)."""
    rgb = image.astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {
        "eyes": int(((r > g + 60) & (r > b + 60)).sum()),
        "nose": int(((g > r + 60) & (g > b + 40)).sum()),
        "ears": int(((b > r + 60) & (b > g + 30)).sum()),
    }


@contextlib.contextmanager
def serve_in_thread(settings: object) -> Iterator[str]:
    """Run the app with ``settings`` (a :class:`defacer.web.settings.WebSettings`) on uvicorn, on a real loopback
    socket, in a thread of this process; yield its address.  For limits that ``defacer serve`` has no option for."""
    import threading

    import uvicorn

    from defacer.cli.serve import bind_socket
    from defacer.web.app import create_app

    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning",  # type: ignore[arg-type]
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
