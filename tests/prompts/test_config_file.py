"""A configuration saved from a notebook loads again with the same ``config_id`` (JSON and TOML),
and a Lab made from the file serves it."""

from __future__ import annotations

import json

import pytest

import chatstream_lab as csl
from chatstream_lab.models import scripted_model
from chatstream_lab.prompts import DeclarativeTemplate

TAGGED = DeclarativeTemplate(name="tagged", system="<sys>{content}</sys>\n", user="<user>{content}</user>\n",
                             assistant="<bot>{content}</bot>\n", generation_prefix="<bot>", stop_strings=("</bot>",))


@pytest.mark.parametrize("suffix", [".json", ".toml"])
@pytest.mark.parametrize("template, system_prompt", [(None, None), (None, "Be brief.\nVery \"brief\"."),
                                                     ("chatml", None), ("vicuna", "Answer in French."),
                                                     (TAGGED, "Tagged system.")])
def test_saved_configuration_round_trips_with_the_same_config_id(tmp_path, template, system_prompt, suffix):
    lab = csl.Lab(scripted_model("ok"), template, system_prompt=system_prompt, temperature=0.7, seed=5,
                  max_new_tokens=33, stop=["\n\n"])
    path = lab.config.save(tmp_path / f"config{suffix}")
    loaded = csl.load_config(path)
    assert loaded.config_id == lab.config.config_id
    assert loaded.params == lab.config.params and loaded.system_prompt == lab.config.system_prompt
    assert loaded.model_ref == lab.config.model_ref
    again = csl.Lab.from_config(path, model=scripted_model("ok"))
    assert again.config.config_id == lab.config.config_id
    lab.close()
    again.close()


def test_an_edited_file_warns_and_a_foreign_file_is_refused(tmp_path):
    lab = csl.Lab(scripted_model("ok"), temperature=0)
    path = lab.config.save(tmp_path / "c.json")
    data = json.loads(path.read_text())
    data["params"]["temperature"] = 0.5
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="edited since it was saved"):
        edited = csl.load_config(path)
    assert edited.params.temperature == 0.5
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(csl.ConfigError, match="not a chatstream_lab configuration"):
        csl.load_config(tmp_path / "other.json")
    with pytest.raises(csl.ModelLoadError, match="scripted"), pytest.warns(UserWarning):
        csl.Lab.from_config(path)  # a scripted model cannot be loaded from a reference
    lab.close()


@pytest.mark.real_model
def test_the_bundled_model_reference_loads_the_same_model(real_model, tmp_path):
    lab = csl.Lab(real_model, "chatml", temperature=0, max_new_tokens=16)
    path = lab.config.save(tmp_path / "c.json")
    assert json.loads(path.read_text())["model"] == {"name": real_model.name, "source": "bundled",
                                                    "backend": "torch", "dtype": "float32"}
    again = csl.Lab.from_config(path)
    assert again.model.name == real_model.name and str(again.model.backend) == "torch"
    assert again.config.config_id == lab.config.config_id
    assert "Paris" in again.generate("What is the capital of France?", timeout=120)
    lab.close()
    again.close()
