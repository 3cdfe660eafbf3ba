"""Hostile and careless clients against a real ``defacer serve`` process (real HTTP, no stand-ins)."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from web_helpers import PhantomFiles, Server, serve_in_thread


def test_two_uploads_into_one_work_area_at_once_lose_no_file(server: Server, phantom_files: PhantomFiles) -> None:
    """A second upload while the first is still streaming is refused in words; the first file is kept intact.

    Both used to be given the same stored name: the second failed with a 500 and removed the first one's file,
    which had been answered 201, so the series was missing a slice (and the byte limit counted neither).
    """
    slices = phantom_files.dicom_files
    first, second = slices[0].read_bytes(), slices[1].read_bytes()

    async def race() -> tuple[httpx.Response, httpx.Response, str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            session = (await client.post("/api/sessions")).json()["session"]
            second_answered = asyncio.Event()

            async def slow_body() -> AsyncIterator[bytes]:
                yield first[:1000]  # the server has seen the type and chosen the stored name
                await asyncio.wait_for(second_answered.wait(), 30)
                yield first[1000:]

            async def other_upload() -> httpx.Response:
                await asyncio.sleep(1.0)  # the first upload is in progress on the server by now
                try:
                    return await client.put(f"/api/sessions/{session}/files/scan", content=second,
                                            headers={"X-File-Name": slices[1].name})
                finally:
                    second_answered.set()

            slow, fast = await asyncio.gather(
                client.put(f"/api/sessions/{session}/files/scan", content=slow_body(),
                           headers={"X-File-Name": slices[0].name}),
                other_upload())
            return slow, fast, session

    slow, fast, session = asyncio.run(race())
    assert slow.status_code == 201, slow.text
    assert fast.status_code == 409, fast.text
    assert "one after another" in fast.json()["error"]
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for path in slices[1:]:
            stored = client.put(f"/api/sessions/{session}/files/scan", content=path.read_bytes(),
                                headers={"X-File-Name": path.name})
            assert stored.status_code == 201, stored.text
        loaded = client.post(f"/api/sessions/{session}/load")
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["files"] == len(slices)
        assert loaded.json()["shape"][2] == len(slices)
        client.delete(f"/api/sessions/{session}")


def test_a_load_while_a_file_is_still_uploading_is_refused_and_loses_nothing(server: Server,
                                                                             phantom_files: PhantomFiles) -> None:
    """A load arriving while a file of the series was still streaming in ran: it could read the series without
    that slice, or the slice half-written (only a hand-made client can do this; the page uploads, then loads)."""
    slices = phantom_files.dicom_files
    last = slices[-1].read_bytes()

    async def race() -> tuple[httpx.Response, httpx.Response, str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            session = (await client.post("/api/sessions")).json()["session"]
            for path in slices[:-1]:
                stored = await client.put(f"/api/sessions/{session}/files/scan", content=path.read_bytes(),
                                          headers={"X-File-Name": path.name})
                assert stored.status_code == 201, stored.text
            load_answered = asyncio.Event()

            async def slow_body() -> AsyncIterator[bytes]:
                yield last[:1000]
                await asyncio.wait_for(load_answered.wait(), 30)
                yield last[1000:]

            async def load_meanwhile() -> httpx.Response:
                await asyncio.sleep(1.0)  # the last upload is in progress on the server by now
                try:
                    return await client.post(f"/api/sessions/{session}/load")
                finally:
                    load_answered.set()

            slow, load = await asyncio.gather(
                client.put(f"/api/sessions/{session}/files/scan", content=slow_body(),
                           headers={"X-File-Name": slices[-1].name}),
                load_meanwhile())
            return slow, load, session

    slow, load, session = asyncio.run(race())
    assert slow.status_code == 201, slow.text
    assert load.status_code == 409, load.text
    assert "still being uploaded" in load.json()["error"]
    with httpx.Client(base_url=server.url, timeout=120) as client:
        loaded = client.post(f"/api/sessions/{session}/load")
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["files"] == len(slices)
        client.delete(f"/api/sessions/{session}")


def peak_memory_bytes(pid: int) -> int:
    """Peak resident memory (VmHWM) of a process, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM line")


def zip_of_empty_entries(count: int) -> bytes:
    """A zip of ``count`` empty members (about 80 bytes each: the table of contents is most of it)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for index in range(count):
            archive.writestr(zipfile.ZipInfo(f"{index}"), b"")
    return buffer.getvalue()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak memory from /proc")
def test_a_zip_listing_200000_entries_is_refused_before_its_table_is_read(server: Server) -> None:
    """The table of contents is checked from the zip's end record, not parsed whole first.

    :mod:`zipfile` keeps about 900 bytes per entry: a 16 MB upload listing 200,000 empty entries took about
    180 MB of the server's memory before the entry count was checked (1 GB of upload: about 10 GB).
    """
    archive = zip_of_empty_entries(200_000)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        session = client.post("/api/sessions").json()["session"]
        stored = client.put(f"/api/sessions/{session}/files/scan", content=archive,
                            headers={"X-File-Name": "series.zip"})
        assert stored.status_code == 201, stored.text
        before = peak_memory_bytes(server.process.pid)
        loaded = client.post(f"/api/sessions/{session}/load")
        grown = peak_memory_bytes(server.process.pid) - before
        client.delete(f"/api/sessions/{session}")
    assert grown < 32_000_000, f"the server's peak memory grew by {grown:,} bytes"
    assert loaded.status_code == 413, loaded.text
    assert "200,000 entries" in loaded.json()["error"] and "one DICOM series" in loaded.json()["error"]


def test_a_refused_zip_leaves_no_partial_series_for_the_next_read(tmp_path: Path, phantom_files: PhantomFiles) -> None:
    """A zip holding more files than the limit is refused, and asking again is refused again.

    Unpacking stopped at the limit and kept the files written so far: a second ``load`` found the folder and
    read its first ``max_files`` slices as a whole series, without a word.
    """
    from defacer.web.settings import WebSettings

    slices = phantom_files.dicom_files
    limit = len(slices) // 2
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in slices:
            archive.write(path, arcname=f"series/{path.name}")
    with serve_in_thread(WebSettings(work_dir=tmp_path / "work", max_files=limit)) as url, \
            httpx.Client(base_url=url, timeout=120) as client:
        session = client.post("/api/sessions").json()["session"]
        stored = client.put(f"/api/sessions/{session}/files/scan", content=buffer.getvalue(),
                            headers={"X-File-Name": "series.zip"})
        assert stored.status_code == 201, stored.text
        answers = [client.post(f"/api/sessions/{session}/load") for _ in range(2)]
        assert [a.status_code for a in answers] == [413, 413], [a.text for a in answers]
        assert all(f"more than {limit} files" in a.json()["error"] for a in answers)
        unpacked = [p for p in (tmp_path / "work").rglob("*.dcm")]
        assert unpacked == []


def test_a_huge_options_body_is_refused_before_it_is_read_whole(server: Server) -> None:
    """The deface options were read with ``request.json()``: any body, however large, was held in memory."""
    padding = "x" * 2_000_000
    with httpx.Client(base_url=server.url, timeout=60) as client:
        session = client.post("/api/sessions").json()["session"]
        announced = client.post(f"/api/sessions/{session}/deface", content=f'{{"pad": "{padding}"}}',
                                headers={"Content-Type": "application/json"})

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
            yield b'{"pad": "'
            for _ in range(40):
                yield b"x" * 50_000
            yield b'"}'

        streamed = client.post(f"/api/sessions/{session}/deface", content=chunks(),
                               headers={"Content-Type": "application/json"})
        small = client.post(f"/api/sessions/{session}/deface", json={"features": ["eyes"]})
        client.delete(f"/api/sessions/{session}")
    for answer in (announced, streamed):
        assert answer.status_code == 413, answer.text
        assert "larger than 65,536 bytes" in answer.json()["error"]
    assert small.status_code == 422 and "Detect the features" in small.json()["error"]


def test_choosing_only_features_that_were_not_found_gives_no_defaced_download(
        server: Server, phantom_files: PhantomFiles, tmp_path: Path) -> None:
    """A label map with the eyes only, defaced for the eyes, then again for the nose alone: the second job fails
    in words and nothing is downloadable, not even the first result.

    It used to end 'done' with 0 voxels changed and offer the original voxels as ``..._defaced.nii.gz``; and a
    second run that failed left the first run's downloads named after their files were removed (500 on each) and
    ``verify`` verifying the first result.
    """
    import nibabel as nib
    import numpy as np

    labels = nib.load(str(phantom_files.labels))
    data = np.asarray(labels.dataobj)
    eyes_only = tmp_path / "eyes_only.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data == 1, 1, 0).astype(np.uint8), labels.affine), str(eyes_only))
    with httpx.Client(base_url=server.url, timeout=120) as client:
        session = client.post("/api/sessions").json()["session"]
        for role, path in (("scan", phantom_files.scan), ("labels", eyes_only)):
            assert client.put(f"/api/sessions/{session}/files/{role}", content=path.read_bytes(),
                              headers={"X-File-Name": path.name}).status_code == 201
        for step in ("load", "detect"):
            assert client.post(f"/api/sessions/{session}/{step}").status_code == 200
        jobs = []
        for features in (["eyes"], ["nose"]):
            assert client.post(f"/api/sessions/{session}/deface", json={"features": features}).status_code == 202
            deadline = time.monotonic() + 120
            while (job := client.get(f"/api/sessions/{session}/job").json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            jobs.append(job)
        downloads = [client.get(f"/api/sessions/{session}/download/{kind}").status_code
                     for kind in ("scan", "mask", "provenance", "report")]
        views = [client.get(f"/api/sessions/{session}/view/{name}").status_code
                 for name in ("defaced.nii.gz", "mask.nii.gz")]
        verified = client.post(f"/api/sessions/{session}/verify")
        client.delete(f"/api/sessions/{session}")
    assert jobs[0]["state"] == "done", jobs[0]
    assert jobs[1]["state"] == "failed", jobs[1]
    assert "none of the chosen features (nose) was found" in jobs[1]["error"]
    assert "Choose features that were found (eyes)" in jobs[1]["error"]
    assert downloads == [404, 404, 404, 404]
    assert views == [404, 404]
    assert verified.status_code == 422 and "Deface the scan before" in verified.json()["error"]


def test_an_upload_the_browser_abandons_is_no_server_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by HOSTILE5: a browser that went away mid-upload (tab closed, upload cancelled) made the server log
    "ERROR ... unexpected ClientDisconnect while answering PUT ...", as for a bug. Its partial file is removed and
    the work area takes the next upload."""
    import logging
    import socket
    from urllib.parse import urlsplit

    from defacer.web.settings import WebSettings

    caplog.set_level(logging.INFO, logger="defacer.web.app")
    with serve_in_thread(WebSettings(work_dir=tmp_path / "work")) as url, httpx.Client(base_url=url) as client:
        session = client.post("/api/sessions").json()["session"]
        address = urlsplit(url)
        with socket.create_connection((address.hostname, address.port)) as sock:
            sock.sendall(f"PUT /api/sessions/{session}/files/scan HTTP/1.1\r\nHost: {address.netloc}\r\n"
                         "Content-Length: 100000\r\nX-File-Name: a.nrrd\r\n\r\n".encode() + b"NRRD0004\n" + b"#" * 900)
            time.sleep(0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "client left" not in caplog.text:
            time.sleep(0.1)
        leftovers = [p for p in (tmp_path / "work").rglob("input.*")]
        again = client.put(f"/api/sessions/{session}/files/scan", content=b"NRRD0004\n",
                           headers={"X-File-Name": "b.nrrd"})
        client.delete(f"/api/sessions/{session}")
    assert "client left before its PUT" in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert leftovers == [] and again.status_code == 201, again.text
