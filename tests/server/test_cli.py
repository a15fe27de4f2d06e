import pytest

from chatstream_lab import cli


def test_serve_parser_defaults_and_options():
    args = cli.build_parser().parse_args(["serve"])
    assert (args.model, args.host, args.port, args.num_of_concurrent_executions, args.max_queue_size,
            args.max_new_tokens, args.token) == (None, "127.0.0.1", 8000, 2, 5, None, None)  # None: 256, or --config's
    args = cli.build_parser().parse_args(
        ["serve", "--model", "m.gguf", "--template", "chatml", "--port", "0", "--num-of-concurrent-executions",
         "4", "--max-queue-size", "0", "--max-new-tokens", "32", "--token", "t"])
    assert (args.model, args.template, args.port, args.num_of_concurrent_executions, args.max_queue_size,
            args.max_new_tokens, args.token) == ("m.gguf", "chatml", 0, 4, 0, 32, "t")
    assert args.func is cli._cmd_serve
    assert args.allowed_host is None
    args = cli.build_parser().parse_args(["serve", "--host", "0.0.0.0", "--allowed-host", "demo.example.org",
                                          "--allowed-host", "*.lab.example"])
    assert (args.host, args.allowed_host) == ("0.0.0.0", ["demo.example.org", "*.lab.example"])


@pytest.mark.parametrize("argv", [[], ["serve", "--num-of-concurrent-executions", "0"],
                                  ["serve", "--port", "-1"], ["bogus"]])
def test_bad_command_lines_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2


def test_serve_reports_load_errors_without_a_traceback(capsys):
    assert cli.main(["serve", "--model", "/does/not/exist", "--port", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def _serve_args(*argv: str):
    return cli.build_parser().parse_args(["serve", *argv])


def test_the_token_comes_from_a_file_or_the_environment(tmp_path, capsys):
    from chatstream_lab.errors import ConfigError

    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    assert cli.resolve_token(_serve_args("--token-file", str(secret)), {}) == "from-a-file"
    assert cli.resolve_token(_serve_args(), {cli.TOKEN_ENV: "from-env"}) == "from-env"
    assert cli.resolve_token(_serve_args(), {}) is None
    assert "warning" not in capsys.readouterr().err
    # --token still works, says why it should not be used, and wins over the environment
    assert cli.resolve_token(_serve_args("--token", "argv"), {cli.TOKEN_ENV: "from-env"}) == "argv"
    assert "process list" in capsys.readouterr().err
    for argv, env in ((("--token", "a", "--token-file", str(secret)), {}),
                      (("--token-file", str(tmp_path / "missing")), {}),
                      (("--token-file", str(secret.with_name("empty"))), {}),
                      ((), {cli.TOKEN_ENV: "two words"})):
        if "empty" in " ".join(argv):
            secret.with_name("empty").write_text("\n")
        with pytest.raises(ConfigError):
            cli.resolve_token(_serve_args(*argv), env)


@pytest.mark.real_model
def test_served_token_never_reaches_the_process_list_or_the_access_log(real_model, tmp_path):
    """``chatstream-lab serve`` with ``$CHATSTREAM_LAB_TOKEN``: the printed page URL carries the
    token in its fragment; the page flow (page, script, history, a streamed reply, all with the
    bearer header) leaves no trace of it in uvicorn's access log or in ``ps`` (issue 10, row 10)."""
    import os
    import re
    import signal
    import subprocess
    import sys

    import httpx

    token = "s3cret-token-" + os.urandom(4).hex()
    env = dict(os.environ, **{cli.TOKEN_ENV: token}, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "chatstream_lab.cli", "serve", "--port", "0",
                             "--max-new-tokens", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://\S+)", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        page = match.group(1)
        assert page.endswith(f"/#token={token}") and "?" not in page
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert token.encode() not in f.read()
        base = page.split("#", 1)[0].rstrip("/")
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.get(page).status_code == 200  # httpx, like a browser, never sends the fragment
            assert client.get("/static/app.js").status_code == 200
            assert client.get("/get_prompt").status_code == 401
            assert client.get("/get_prompt", headers=auth).status_code == 200
            r = client.post("/chat_stream", json={"user_input": "Hi"},
                            headers={**auth, "accept": "text/event-stream"})
            assert r.status_code == 200 and "event: done" in r.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = out + err  # uvicorn's access log goes to stdout, after the line with the page URL
    assert "POST /chat_stream" in logs and "GET /get_prompt" in logs, logs[-2000:]
    assert token not in logs, logs[-2000:]
    assert "Traceback" not in logs, logs[-3000:]


def test_backend_and_dtype_options_for_serve_and_chat():
    args = cli.build_parser().parse_args(["serve"])
    assert (args.backend, args.dtype, args.temperature) == ("auto", None, None)
    args = cli.build_parser().parse_args(["serve", "--backend", "openvino", "--dtype", "int8", "--temperature", "0.5"])
    assert (args.backend, args.dtype, args.temperature) == ("openvino", "int8", 0.5)
    args = cli.build_parser().parse_args(["chat", "--backend", "torch"])
    assert (args.backend, args.temperature) == ("torch", None)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--backend", "tensorrt"])


@pytest.mark.real_model
def test_console_chat_on_the_default_backend_answers_paris(openvino_model):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "chatstream_lab.cli", "chat", "--ask",
                           "What is the capital of France?"], capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "The capital of France is Paris." in proc.stdout  # the bundled model's greedy default


@pytest.mark.real_model
def test_serve_config_serves_the_notebooks_configuration_with_its_config_id(real_model, tmp_path):
    """A configuration saved in a notebook (``lab.config.save``) served by the real CLI: the printed
    line and ``/stats`` report the notebook's ``config_id``, and the reply is that configuration's."""
    import os
    import re
    import signal
    import subprocess
    import sys

    import httpx

    from chatstream_lab import Lab

    lab = Lab(real_model, "chatml", system_prompt="You are a geography tutor. Answer in one sentence.",
              temperature=0, max_new_tokens=24)
    expected = lab.generate("What is the capital of France?", timeout=120)
    path = lab.config.save(tmp_path / "tutor.toml")
    lab.close()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "chatstream_lab.cli", "serve", "--config", str(path), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://\S+)\s+config_id (\w+)", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None else "")
        base, printed = match.group(1).rstrip("/"), match.group(2)
        assert printed == lab.config.config_id
        with httpx.Client(base_url=base, timeout=120) as client:
            stats = client.get("/stats").json()
            assert stats["config_id"] == lab.config.config_id
            r = client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "What is the capital of France?"}]})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_precision_option_parses():
    assert cli.build_parser().parse_args(["serve"]).precision is None
    assert cli.build_parser().parse_args(["serve", "--precision", "auto"]).precision == "auto"
    assert cli.build_parser().parse_args(["chat", "--dtype", "int8/f32"]).dtype == "int8/f32"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--precision", "fastest"])


@pytest.mark.real_model
@pytest.mark.parametrize("argv", [(), ("--dtype", "float16/f32")], ids=["no-flags", "dtype-override"])
def test_serve_runs_the_calibrated_precision_unless_dtype_overrides_it(openvino_model, argv):
    """``chatstream-lab serve`` with no flags serves the precision calibration chose for this machine
    (cached by the setup step); ``--dtype`` wins over it. Both say so in /v1/models and /stats."""
    import os
    import re
    import signal
    import subprocess
    import sys

    import httpx

    expected = (openvino_model.dtype, "cached calibration") if not argv else ("float16/f32", "dtype override")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "chatstream_lab.cli", "serve", "--port", "0", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://\S+)", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None else "")
        with httpx.Client(base_url=match.group(1).rstrip("/"), timeout=60) as client:
            model = client.get("/v1/models").json()["data"][0]
            assert (model["backend"], model["precision"], model["precision_source"]) == ("openvino", *expected)
            stats = client.get("/stats").json()["precision"]
            assert (stats["precision"], stats["source"]) == expected
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert f"Precision: {expected[0]} ({expected[1]}" in err
