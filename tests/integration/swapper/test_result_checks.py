"""A remote result is checked before it is called swapped: a real swapper server, the local S3
server, the RunPod emulator (scripted, and once with the real worker), real photos.

- the unchanged check (FACE_SWAP_VERIFY's default): an endpoint that returns the target, as it
  came or re-encoded, and reports success falls back with SWAP_UNCHANGED;
- the identity check (FACE_SWAP_VERIFY=identity, dlib in child processes): a face dlib does not
  recognise as the reference falls back with SWAP_NOT_LIKE_REFERENCE; the distance is reported
  whenever it was measured.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from facegen.v1 import common_pb2
from services.stack.runpod_emulator import Faults, JobPlan, WorkerPool
from services.swapper.identity import IdentityCheck
from tests.face_photos import ASTRONAUT_FACE, astronaut, encode, hopper, pasted_face
from tests.integration.swapper.harness import PRIMARY, Harness, MakeSwapper, kinds, result_of
from tests.waiting import until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
WORKER_PYTHON = REPO / ".venv-worker" / "bin" / "python"
SAME_PERSON = 0.6


def _returning(harness: Harness, picture: bytes) -> None:
    """Every job of the primary endpoint completes with ``picture`` as its result."""
    harness.fake.endpoint(PRIMARY).plan = JobPlan(run_s=0.05, output={"result": base64.b64encode(picture).decode()})


async def _identity_swapper(make_swapper: MakeSwapper, **env: str) -> Harness:
    harness = await make_swapper(FACE_SWAP_VERIFY="identity", FACE_SWAP_DEADLINE_SECONDS="60", **env)
    assert isinstance(harness.app.identity, IdentityCheck)
    await harness.app.identity.start()  # as prepare() does: the models load before traffic comes
    return harness


async def test_a_target_sent_back_as_it_came_falls_back_unchanged(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    harness.fake.endpoint(PRIMARY).faults.set(Faults(unchanged_rate=1.0))
    target = encode(astronaut(), "PNG")
    events = await harness.swap(harness.request(await harness.put_reference(encode(hopper(), "JPEG")),
                                                job_id="unchanged", target=target))
    result = result_of(events)
    assert [e.remote_status.status for e in events if e.WhichOneof("event") == "remote_status"][-1] == "COMPLETED"
    assert result.method == common_pb2.FACE_SWAP_METHOD_NONE
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_SWAP_UNCHANGED
    assert "reported success" in result.fallback_message and "unchanged" in result.fallback_message
    assert not result.HasField("identity_distance")
    assert result.key == "results/unchanged/0-original.png"
    assert harness.get(result.key) == target
    await harness.assert_quiet()


@pytest.mark.parametrize(("fmt", "options"), [("JPEG", {"quality": 75}), ("WEBP", {"quality": 90})])
async def test_a_target_sent_back_re_encoded_falls_back_unchanged(make_swapper: MakeSwapper, fmt: str,
                                                                  options: dict[str, object]) -> None:
    harness = await make_swapper()
    _returning(harness, encode(astronaut(), fmt, **options))
    events = await harness.swap(harness.request(await harness.put_reference(), target=encode(astronaut(), "PNG")))
    assert result_of(events).fallback_reason == common_pb2.FALLBACK_REASON_SWAP_UNCHANGED


async def test_a_swapped_face_is_delivered_as_swapped(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper()
    swapped = encode(pasted_face(astronaut(), ASTRONAUT_FACE), "JPEG", quality=92)
    _returning(harness, swapped)
    events = await harness.swap(harness.request(await harness.put_reference(), job_id="swapped",
                                                target=encode(astronaut(), "PNG")))
    result = result_of(events)
    assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API, result.fallback_message
    assert not result.HasField("identity_distance")  # the identity check is off by default
    assert harness.get(result.key) == swapped


async def test_with_verify_off_the_endpoint_is_trusted(make_swapper: MakeSwapper) -> None:
    harness = await make_swapper(FACE_SWAP_VERIFY="off")
    harness.fake.endpoint(PRIMARY).faults.set(Faults(unchanged_rate=1.0))
    events = await harness.swap(harness.request(await harness.put_reference(), target=encode(astronaut(), "PNG")))
    assert result_of(events).method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API


async def test_a_face_recognised_as_the_reference_is_swapped_with_its_distance(make_swapper: MakeSwapper) -> None:
    harness = await _identity_swapper(make_swapper)
    _returning(harness, encode(pasted_face(astronaut(), ASTRONAUT_FACE), "JPEG", quality=92))
    reference = await harness.put_reference(encode(hopper(), "JPEG"))
    result = result_of(await harness.swap(harness.request(reference, target=encode(astronaut(), "PNG"))))
    assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API, result.fallback_message
    assert result.HasField("identity_distance")
    assert 0 < result.identity_distance < SAME_PERSON
    await harness.assert_quiet()


async def test_a_face_not_recognised_as_the_reference_falls_back_with_its_distance(
        make_swapper: MakeSwapper, caplog: pytest.LogCaptureFixture) -> None:
    harness = await _identity_swapper(make_swapper)
    # The endpoint changed the face (mirrored it), but it is still the astronaut, not Hopper (0.70 apart).
    changed = astronaut().copy()
    changed.paste(ImageOps.mirror(astronaut().crop(ASTRONAUT_FACE)), ASTRONAUT_FACE[:2])
    _returning(harness, encode(changed, "JPEG", quality=92))
    target = encode(astronaut(), "PNG")
    reference = await harness.put_reference(encode(hopper(), "JPEG"))
    with caplog.at_level(logging.INFO, logger="services.swapper"):
        result = result_of(await harness.swap(harness.request(reference, job_id="not-her", target=target)))
    assert result.method == common_pb2.FACE_SWAP_METHOD_NONE
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_SWAP_NOT_LIKE_REFERENCE
    assert result.identity_distance > SAME_PERSON
    assert f"distance {result.identity_distance:.2f}" in result.fallback_message
    assert "FACE_SWAP_IDENTITY_THRESHOLD" in result.fallback_message
    assert harness.get(result.key) == target  # the original is delivered
    assert any("event=swap.identity " in r.getMessage() for r in caplog.records)


async def test_the_threshold_is_the_setting(make_swapper: MakeSwapper) -> None:
    harness = await _identity_swapper(make_swapper, FACE_SWAP_IDENTITY_THRESHOLD="0.05")
    _returning(harness, encode(pasted_face(astronaut(), ASTRONAUT_FACE), "JPEG", quality=92))
    reference = await harness.put_reference(encode(hopper(), "JPEG"))
    result = result_of(await harness.swap(harness.request(reference, target=encode(astronaut(), "PNG"))))
    assert result.fallback_reason == common_pb2.FALLBACK_REASON_SWAP_NOT_LIKE_REFERENCE
    assert 0.05 < result.identity_distance < SAME_PERSON
    assert "threshold 0.05" in result.fallback_message


async def test_a_reference_without_a_face_leaves_the_swap_unmeasured(make_swapper: MakeSwapper,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    harness = await _identity_swapper(make_swapper)
    _returning(harness, encode(pasted_face(astronaut(), ASTRONAUT_FACE), "JPEG", quality=92))
    no_face = encode(Image.new("RGB", (200, 200), (120, 160, 90)), "PNG")
    with caplog.at_level(logging.INFO, logger="services.swapper"):
        result = result_of(await harness.swap(harness.request(await harness.put_reference(no_face),
                                                              target=encode(astronaut(), "PNG"))))
    assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    assert not result.HasField("identity_distance")
    unmeasured = [r.getMessage() for r in caplog.records if "event=swap.identity_unmeasured" in r.getMessage()]
    assert unmeasured and "no frontal face in the reference photo" in unmeasured[0]


@pytest.mark.timeout(240)
async def test_the_real_worker_swap_is_recognised_as_the_reference(make_swapper: MakeSwapper) -> None:
    assert WORKER_PYTHON.exists(), "the worker's environment (.venv-worker, make setup) runs the real worker"
    harness = await _identity_swapper(make_swapper, FACE_SWAP_ENDPOINT="ep-real")
    pool = WorkerPool(1, env={"FACESWAP_ALLOW_PRIVATE_URLS": "true"}, spares=0, python=str(WORKER_PYTHON))
    harness.fake.endpoint("ep-real", pool)
    await until(pool.ready, 180, "the worker process warmed up", every_s=0.2)
    reference = await harness.put_reference(encode(hopper(), "JPEG"))
    events = await harness.swap(harness.request(reference, target=encode(astronaut(), "PNG")), rpc_timeout_s=120)
    result = result_of(events)
    assert "submitted" in kinds(events)
    assert result.method == common_pb2.FACE_SWAP_METHOD_EXTERNAL_API, result.fallback_message
    assert result.identity_distance < SAME_PERSON
