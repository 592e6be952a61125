"""One flag vocabulary (edge_runtime/flags.py) across python -m convert, python -m edge_runtime and tools/."""
import argparse

import pytest

from edge_runtime import flags
from realworld import convert_main, one_error_line


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from convert.cli import build_parser as convert_parser
    from edge_runtime.capture import build_parser as capture_parser
    from edge_runtime.cli import build_parser as runtime_parser
    from tools.benchmark import build_parser as bench_parser

    sub = next(a for a in convert_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {**{f"convert {name}": p for name, p in sub.choices.items()}, "edge_runtime": runtime_parser(),
            "edge_runtime capture": capture_parser(), "tools.benchmark": bench_parser()}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings if a.help != argparse.SUPPRESS}


# Flags that still differ, each with its owner's reason; remove the entry when it is aligned.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def test_one_meaning_per_flag():
    parsers = _parsers()
    for name, parser in parsers.items():
        opts = {o: a for o, a in _options(parser).items() if (name, o) not in EXCEPTIONS}
        assert "--images" not in opts, name  # labelled images are --val everywhere
        if "--json" in opts:  # a switch: JSON on stdout
            assert opts["--json"].nargs in (0, "?") and opts["--json"].const is True, name
        if "--report" in opts:  # a JSON file
            assert opts["--report"].nargs is None and opts["--report"].type is not None, name
        if "--top-k" in opts:
            assert opts["--top-k"].default == flags.TOP_K == 5, name
        if "--resize" in opts:
            assert opts["--resize"].type is flags.resize_arg, name
        if "--input-size" in opts:  # N or HxW; where the input must be square, N or NxN
            assert opts["--input-size"].type in (flags.input_size_arg, flags.square_size_arg), name
        if "--lr" in opts:  # convert train (tools.design_space: below): bounded (past float32's range, a traceback)
            assert opts["--lr"].type is flags.lr_arg, name
        for action in opts.values():
            assert action.help, (name, action.option_strings)  # every flag has a help text
    assert "--val" in _options(parsers["convert tflite"]) and "--val" in _options(parsers["convert evaluate"])
    assert "--val" in _options(parsers["convert compress"]) and "--val" in _options(parsers["tools.benchmark"])


def test_capture_speaks_the_runtimes_flags():
    """capture's JPEG quality was --quality where the runtime has --jpeg-quality (the same thing: JPEG quality
    1-100), and it had no --stream-timeout. A flag both take is one definition; --count (saved photos) differs
    from the runtime's --max-frames (classified frames), keeps its name and says so."""
    parsers = _parsers()
    runtime, capture = _options(parsers["edge_runtime"]), _options(parsers["edge_runtime capture"])
    assert "--quality" not in capture and "--jpeg-quality" in capture and "--jpeg-quality" in runtime
    for flag in set(runtime) & set(capture) - {"--jpeg-quality"}:  # its default: 75 for the view, 95 for photos
        a, b = runtime[flag], capture[flag]
        assert (a.type, a.default, a.help, a.metavar) == (b.type, b.default, b.help, b.metavar), flag
    assert {"--stream-timeout", "--source", "--camera", "--picamera"} <= set(capture)
    assert "saved photos" in capture["--count"].help and "--max-frames" in capture["--count"].help


def test_input_size_means_the_same_everywhere():
    assert flags.input_size_arg("224") == (224, 224) and flags.input_size_arg("224x160") == (224, 160)
    assert flags.square_size_arg("128") == 128 == flags.square_size_arg("128x128")
    for bad in ("0", "x", "224x", "-3", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError, match="N \\(square\\) or HxW"):
            flags.input_size_arg(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="a square input expected"):
        flags.square_size_arg("128x96")


def test_resize_means_the_same_everywhere():
    assert flags.resize_arg("256") == (256, 0) and flags.resize_arg("256x320") == (256, 320)
    for bad in ("0", "x", "256x", "-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="N \\(shorter side\\) or HxW"):
            flags.resize_arg(bad)


@pytest.mark.parametrize("argv, old, new", [
    (["convert", "evaluate", "--weights", "w", "--images", "X"], "--images", "--val"),
    (["convert", "compress", "--weights", "w", "--out", "o.sqz", "--limit", "7"], "--limit", "--sensitivity-limit"),
    (["edge_runtime", "--source", "a.mp4", "--simulate-disconnect-every", "9"], "--simulate-disconnect-every",
     "--disconnect-every"),
    (["tools.benchmark", "--model", "m.tflite", "--images", "X"], "--images", "--val"),
    (["capture", "--source", "a.mp4", "--label", "a", "--out", "o", "--quality", "50"], "--quality",
     "--jpeg-quality"),
])
def test_old_spellings_work_for_one_release(argv, old, new, capsys):
    from convert.cli import build_parser as convert_parser
    from edge_runtime.capture import build_parser as capture_parser
    from edge_runtime.cli import build_parser as runtime_parser
    from tools.benchmark import build_parser as bench_parser

    parser = {"convert": convert_parser, "edge_runtime": runtime_parser, "capture": capture_parser,
              "tools.benchmark": bench_parser}[argv[0]]()
    args = parser.parse_args(argv[1:])
    dest = new.lstrip("-").replace("-", "_")
    assert str(getattr(args, dest)) == argv[-1]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {old} is deprecated and goes in the next release; use {new}"]


def test_flags_that_do_not_apply_are_refused(tmp_path):
    proc = convert_main("tflite", "--weights", "deep-compression", "--mean", "1,2,3", "--channel-order", "BGR",
                        "--out", tmp_path / "x_int8.tflite")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: --channel-order, --mean: only with --onnx (the weights' record gives their labels and preprocessing)")
    proc = convert_main("tflite", "--onnx", tmp_path / "m.onnx", "--arch", "squeezenet1_1",
                        "--out", tmp_path / "x_int8.tflite")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: --arch: only with --weights (an ONNX file carries its own architecture)")

    # the gates of train/compress --tflite were ignored without it: refused before any work (nothing is read)
    for command, argv in (("train", ["--data", tmp_path / "none", "--out", tmp_path / "run", "--min-agreement", "0.9"]),
                          ("compress", ["--weights", "deep-compression", "--out", tmp_path / "x.sqz",
                                        "--max-top1-drop", "2", "--min-agreement", "0.9"])):
        proc = convert_main(command, *argv)
        flags = "--min-agreement" if command == "train" else "--min-agreement, --max-top1-drop"
        assert proc.returncode == 2 and proc.stderr.strip() == (
            f"error: {flags}: only with --tflite (gates of its int8 conversion; without --tflite nothing is converted)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("main, argv, expect", [
    ("edge_runtime.cli", ["--image", "x.jpg", "--threshold", "nan"], "--threshold: 'nan': a probability from 0 to 1"),
    ("edge_runtime.cli", ["--image", "x.jpg", "--threshold", "2"], "--threshold: '2': a probability from 0 to 1"),
    ("edge_runtime.cli", ["--image", "x.jpg", "--threads", "100000"], "--threads: '100000': a number of threads"),
    ("tools.runtime_bench", ["--threads", "0"], "--threads: '0': a number of threads from 1 to 256"),
    ("tools.interpreter_agreement", ["dump", "--threads", "-1"], "--threads: '-1': a number of threads"),
    ("tools.design_space", ["--list", "--threads", "999"], "--threads: '999': a number of threads from 1 to 256"),
    ("tools.design_space", ["--list", "--lr", "1e308"], "--lr: '1e308': a rate above 0 and at most 10"),
])
def test_threads_threshold_and_rates_are_bounded(main, argv, expect, capsys):
    """A threshold no probability reaches hid every label without a word; 100,000 threads took seconds to
    start; 0 or -1 reached the interpreter. Each is refused by its flag, in one line."""
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(main).main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and expect in err[-1], err


def test_learning_rates_are_bounded_when_the_command_line_is_read(tmp_path):
    """--lr 1e308 ended training in a traceback (past float32's range torch cannot take the SGD step); any rate
    above 10 only diverges. Both are refused before any work (--lr x --finetune-lr above 10 too:
    test_train.test_bad_inputs_one_line_nothing_overwritten)."""
    for flag in ("--lr", "--finetune-lr"):
        for bad in ("1e308", "11", "0", "nan"):
            proc = convert_main("train", "--data", tmp_path, "--out", tmp_path / "run", flag, bad)
            assert f"argument {flag}: '{bad}': a rate above 0 and at most 10 expected" in one_error_line(proc)
    assert flags.lr_arg("10") == 10.0 and flags.lr_arg("1e-4") == 1e-4
    assert not (tmp_path / "run").exists()
