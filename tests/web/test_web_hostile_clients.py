"""Hostile and careless clients against a real ``defacer serve`` process (real HTTP, no stand-ins)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from web_helpers import PhantomFiles, Server


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
