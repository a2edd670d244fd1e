"""Tests for efficientad_plugin.teacher_weights, entirely offline (``urlopen`` is replaced)."""

from __future__ import annotations

import hashlib
import io
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

from efficientad_plugin import teacher_weights as tw
from efficientad_plugin.pdn import PatchDescriptionNetwork, load_pdn_state_dict
from efficientad_plugin.teacher_weights import (
    UNTRAINED,
    WEIGHTS_BY_SIZE,
    PDNMediumWeights,
    PDNSmallWeights,
    Weights,
    WeightsEnum,
    cache_dir,
    load_teacher_state_dict,
    resolve_teacher_weights,
    sha256_of,
)

RELEASE_FILE = "efficientad_pretrained_weights.zip"
SMALL_MEMBER = "efficientad_pretrained_weights/pretrained_teacher_small.pth"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point anomalib's cache into tmp_path and make any real network access fail the test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def no_network(*args, **kwargs):
        pytest.fail(f"unexpected network access: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    expected = tmp_path / "xdg" / "anomalib" / "pre_trained"
    assert cache_dir() == expected
    return expected


@pytest.fixture
def packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Entries without a url live inside the package: point that folder into tmp_path."""
    folder = tmp_path / "package"
    folder.mkdir()
    monkeypatch.setattr(tw, "PACKAGED_TEACHERS", folder)
    return folder


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    return calls


@pytest.fixture(scope="module")
def small_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return PatchDescriptionNetwork("small").state_dict()


def _zip_bytes(member: str, state_dict: dict[str, torch.Tensor]) -> bytes:
    payload = io.BytesIO()
    torch.save(state_dict, payload)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(member, payload.getvalue())
    return archive.getvalue()


def _assert_equal_state_dicts(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


# --- resolve_teacher_weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "model_size", "expected"),
    [
        ("DEFAULT", "small", PDNSmallWeights.ANOMALIB_RELEASE),
        ("ANOMALIB_RELEASE", "small", PDNSmallWeights.ANOMALIB_RELEASE),
        ("PDNSmallWeights.ANOMALIB_RELEASE", "small", PDNSmallWeights.ANOMALIB_RELEASE),
        ("PDNSmallWeights.DEFAULT", "small", PDNSmallWeights.ANOMALIB_RELEASE),
        ("DEFAULT", "medium", PDNMediumWeights.ANOMALIB_RELEASE),
        ("ANOMALIB_RELEASE", "medium", PDNMediumWeights.ANOMALIB_RELEASE),
        ("PDNMediumWeights.DEFAULT", "medium", PDNMediumWeights.ANOMALIB_RELEASE),
    ],
)
def test_resolve_known_entries(spec: str, model_size: str, expected: WeightsEnum) -> None:
    resolved = resolve_teacher_weights(spec, model_size)
    assert resolved is expected
    assert type(resolved) is WEIGHTS_BY_SIZE[model_size]


def test_resolve_untrained() -> None:
    assert resolve_teacher_weights(UNTRAINED, "small") is None
    assert resolve_teacher_weights("untrained", "medium") is None


def test_resolve_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pth"
    torch.save({}, path)
    for spec in (path, str(path)):
        resolved = resolve_teacher_weights(spec, "small")
        assert isinstance(resolved, Path)
        assert resolved == path


@pytest.mark.parametrize(
    ("spec", "model_size"), [("PDNMediumWeights.DEFAULT", "small"), ("PDNSmallWeights.ANOMALIB_RELEASE", "medium")]
)
def test_resolve_entry_of_other_size(spec: str, model_size: str) -> None:
    with pytest.raises(ValueError, match="another model size") as error:
        resolve_teacher_weights(spec, model_size)
    assert spec in str(error.value)


@pytest.mark.parametrize("spec", ["NO_SUCH_ENTRY", "PDNSmallWeights.NOPE", "/nonexistent/teacher.pth", "default"])
def test_resolve_unknown_name(spec: str) -> None:
    with pytest.raises(FileNotFoundError) as error:
        resolve_teacher_weights(spec, "small")
    message = str(error.value)
    assert repr(spec) in message
    assert "ANOMALIB_RELEASE" in message and "DEFAULT" in message
    assert UNTRAINED in message


# --- the enum entries -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("enum", [PDNSmallWeights, PDNMediumWeights])
def test_entries_are_documented(enum: type[WeightsEnum]) -> None:
    model_size = {PDNSmallWeights: "small", PDNMediumWeights: "medium"}[enum]
    assert WEIGHTS_BY_SIZE[model_size] is enum
    assert {"ANOMALIB_RELEASE", "DEFAULT"} <= set(enum.__members__)
    for name, entry in enum.__members__.items():
        weights = entry.value
        assert isinstance(weights, Weights), name
        assert re.fullmatch(r"[0-9a-f]{64}", weights.sha256), name
        if weights.url:
            assert weights.url.startswith("https://")
            assert weights.archive_member.endswith(f"pretrained_teacher_{model_size}.pth")
        else:  # shipped inside the package
            assert weights.path.is_file(), name
        assert {"input", "normalisation", "resize"} <= set(weights.transforms)
        assert {"distilled_from", "distillation_data", "distillation_steps", "num_params"} <= set(weights.meta)
        teacher = PatchDescriptionNetwork(model_size)
        assert weights.meta["num_params"] == sum(parameter.numel() for parameter in teacher.parameters())


def test_default_is_alias_of_anomalib_release() -> None:
    assert PDNSmallWeights.DEFAULT is PDNSmallWeights.ANOMALIB_RELEASE
    assert PDNMediumWeights.DEFAULT is PDNMediumWeights.ANOMALIB_RELEASE
    assert PDNSmallWeights.DEFAULT not in [PDNSmallWeights.LITE0_NATURAL2K_V1]
    assert PDNSmallWeights.DEFAULT.qualified_name == "PDNSmallWeights.ANOMALIB_RELEASE"
    assert PDNSmallWeights.ANOMALIB_RELEASE.value != PDNMediumWeights.ANOMALIB_RELEASE.value


def test_entry_path_is_in_anomalib_cache(cache: Path) -> None:
    assert PDNSmallWeights.DEFAULT.value.path == cache / RELEASE_FILE


# --- downloading and verifying --------------------------------------------------------------------------------


def test_offline_download_fails_with_instructions(cache: Path, offline: list[str]) -> None:
    with pytest.raises(FileNotFoundError) as error:
        PDNSmallWeights.DEFAULT.get_state_dict()
    message = str(error.value)
    entry = PDNSmallWeights.DEFAULT.value
    assert offline == [entry.url]
    assert str(cache / RELEASE_FILE) in message
    assert entry.url in message
    assert entry.sha256 in message
    assert "teacher_weights=" in message
    assert UNTRAINED in message
    assert "offline" in message
    assert "PDNSmallWeights.ANOMALIB_RELEASE" in message
    assert list(cache.iterdir()) == []  # no partial download left behind


def test_offline_load_teacher_state_dict(cache: Path, offline: list[str]) -> None:
    with pytest.raises(FileNotFoundError, match="untrained"):
        load_teacher_state_dict("DEFAULT", "medium")
    assert list(cache.iterdir()) == []


def test_wrong_file_in_cache_is_rejected(cache: Path, small_state_dict) -> None:
    path = cache / RELEASE_FILE
    path.write_bytes(_zip_bytes(SMALL_MEMBER, small_state_dict))  # right layout, not the published bytes
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = PDNSmallWeights.DEFAULT.value.sha256
    assert actual != expected
    with pytest.raises(ValueError, match="not used") as error:  # the autouse fixture fails on any download
        PDNSmallWeights.DEFAULT.get_state_dict()
    message = str(error.value)
    assert actual in message
    assert expected in message
    assert str(path) in message


def test_verified_archive_entry_loads(packaged: Path, small_state_dict, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _zip_bytes(SMALL_MEMBER, small_state_dict)
    (packaged / "teacher.zip").write_bytes(data)
    weights = Weights(file_name="teacher.zip", sha256=hashlib.sha256(data).hexdigest(), archive_member=SMALL_MEMBER)
    _assert_equal_state_dicts(weights.get_state_dict("test"), small_state_dict)

    class FakeSmallWeights(WeightsEnum):
        ANOMALIB_RELEASE = weights
        DEFAULT = ANOMALIB_RELEASE

    monkeypatch.setitem(tw.WEIGHTS_BY_SIZE, "small", FakeSmallWeights)
    state_dict, description = load_teacher_state_dict("DEFAULT", "small")
    assert description == "FakeSmallWeights.ANOMALIB_RELEASE"
    _assert_equal_state_dicts(state_dict, small_state_dict)
    pdn = PatchDescriptionNetwork("small")
    pdn.load_state_dict(state_dict)


def test_verified_plain_file_entry_loads(packaged: Path, small_state_dict) -> None:
    path = packaged / "teacher.pth"
    torch.save(small_state_dict, path)
    weights = Weights(file_name="teacher.pth", sha256=sha256_of(path))
    _assert_equal_state_dicts(weights.get_state_dict("test"), small_state_dict)


def test_download_then_verify(cache: Path, small_state_dict, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _zip_bytes(SMALL_MEMBER, small_state_dict)
    url = "https://example.invalid/teacher.zip"
    calls: list[str] = []

    def fake_urlopen(requested, *args, **kwargs):
        calls.append(requested)
        return io.BytesIO(data)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    weights = Weights("teacher.zip", hashlib.sha256(data).hexdigest(), url=url, archive_member=SMALL_MEMBER)
    _assert_equal_state_dicts(weights.get_state_dict("test"), small_state_dict)
    assert calls == [url]
    assert [path.name for path in cache.iterdir()] == ["teacher.zip"]  # the temporary file was renamed
    _assert_equal_state_dicts(weights.get_state_dict("test"), small_state_dict)
    assert calls == [url]  # cached: no second download


def test_missing_packaged_file(packaged: Path) -> None:
    weights = Weights(file_name="local.pth", sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="the file is missing") as error:
        weights.get_state_dict("LocalWeights.X")
    assert str(packaged / "local.pth") in str(error.value)
    assert "reinstall" in str(error.value)
    assert "LocalWeights.X" in str(error.value)


def test_sha256_of(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    data = bytes(range(256)) * 5000  # over one read chunk
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()


# --- load_teacher_state_dict with files -----------------------------------------------------------------------


def test_load_file(tmp_path: Path, small_state_dict) -> None:
    path = tmp_path / "teacher.pth"
    torch.save(small_state_dict, path)
    state_dict, description = load_teacher_state_dict(str(path), "small")
    assert description == str(path)
    _assert_equal_state_dicts(state_dict, small_state_dict)


def test_load_untrained() -> None:
    assert load_teacher_state_dict(UNTRAINED, "small") == (None, UNTRAINED)


def test_load_truncated_file(tmp_path: Path, small_state_dict) -> None:
    path = tmp_path / "truncated.pth"
    buffer = io.BytesIO()
    torch.save(small_state_dict, buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="Cannot load teacher weights") as error:
        load_teacher_state_dict(path, "small")
    assert str(path) in str(error.value)


def test_load_file_holding_a_list(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2), torch.ones(3)], path)
    with pytest.raises(ValueError, match="hold a list") as error:
        load_teacher_state_dict(path, "small")
    assert str(path) in str(error.value)


# --- the teacher that ships with the package ----------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["LITE0_NATURAL2K_V1", "LITE0_NATURAL2K_V2"])
def test_bundled_teacher_loads_offline_verified_into_float32(offline: list[str], entry: str) -> None:
    state_dict, description = load_teacher_state_dict(entry, "small")
    assert description == f"PDNSmallWeights.{entry}"
    assert offline == []  # nothing was downloaded
    pdn = PatchDescriptionNetwork("small")
    load_pdn_state_dict(pdn, state_dict, description)
    assert all(parameter.dtype == torch.float32 for parameter in pdn.parameters())
    assert torch.equal(pdn.conv1.weight, state_dict["conv1.weight"].float())
    weights = tw.PDNSmallWeights[entry].value
    assert weights.sha256 == sha256_of(weights.path)
    assert weights.meta["distilled_from"].startswith("tf_efficientnet_lite0")
    assert weights.meta["distillation_steps"] > 0


def test_only_the_release_counts_as_the_papers_teacher() -> None:
    assert tw.is_paper_teacher("DEFAULT", "small")
    assert tw.is_paper_teacher("PDNMediumWeights.ANOMALIB_RELEASE", "medium")
    assert not tw.is_paper_teacher("LITE0_NATURAL2K_V1", "small")
    assert not tw.is_paper_teacher("LITE0_NATURAL2K_V2", "small")
    assert not tw.is_paper_teacher(UNTRAINED, "small")
