import pytest

from chatstream_lab import cli


def test_serve_parser_defaults_and_options():
    args = cli.build_parser().parse_args(["serve"])
    assert (args.model, args.host, args.port, args.num_of_concurrent_executions, args.max_queue_size,
            args.max_new_tokens, args.token) == (None, "127.0.0.1", 8000, 2, 5, 256, None)
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
