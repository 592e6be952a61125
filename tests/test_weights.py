import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch

from convert import weights as W
from convert.errors import WeightsError
from convert.models import create_model


def test_env_dir_resolution(weights_env, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = W.resolve("deep-compression", download=False)
    assert path.parent == weights_env


def test_cache_then_download(dc_net_file, monkeypatch, tmp_path):
    monkeypatch.delenv(W.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="put compressed_SqueezeNet.net in"):
        W.resolve("deep-compression", download=False)
    calls = []

    def fetch(url):  # stands in for the network: the real file's bytes
        calls.append(url)
        return dc_net_file.read_bytes()

    path = W.resolve("deep-compression", fetch=fetch)
    assert calls == [W.WEIGHTS["deep-compression"].url]
    assert path == W.cache_dir() / "compressed_SqueezeNet.net" and path.read_bytes() == dc_net_file.read_bytes()
    assert W.resolve("deep-compression", fetch=lambda u: pytest.fail("must use the cache")) == path


def test_offline_message(monkeypatch, tmp_path):
    monkeypatch.delenv(W.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def offline(url):
        raise OSError("Name or service not known")

    with pytest.raises(WeightsError, match="not available offline.*SQUEEZENET_EDGE_WEIGHTS_DIR"):
        W.resolve("deep-compression", fetch=offline)
    assert not any((tmp_path / "squeezenet-edge" / "weights").glob("*"))  # nothing partial left


def _local_mirror(dc_net_file, folder: Path):
    """An HTTP server on 127.0.0.1 holding the release file at its public path ($SQUEEZENET_EDGE_MIRROR)."""
    import http.server
    import threading
    import urllib.parse

    url = urllib.parse.urlsplit(W.WEIGHTS["deep-compression"].url)
    copy = folder / url.netloc / url.path.strip("/")
    copy.parent.mkdir(parents=True)
    copy.write_bytes(dc_net_file.read_bytes())

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(folder), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_ci_user_without_a_home_downloads_into_no_tilde_folder(dc_net_file, tmp_path):
    """A CI container's user often has no $HOME and no passwd entry (docker --user 1234): `~` stayed `~`,
    and the download went to a folder named `~` in the working directory (a source checkout). Now the
    cache is a folder of the temporary directory. Real process, real download from a local mirror;
    passwd lookups see a passwd file without this user (a mount namespace: root, as CI runs)."""
    import subprocess
    import sys

    job = tmp_path / "checkout"
    job.mkdir()
    (tmp_path / "passwd").write_text("".join(line for line in Path("/etc/passwd").read_text().splitlines(True)
                                             if line.split(":")[2:3] != [str(os.getuid())]))
    (tmp_path / "nsswitch.conf").write_text("passwd: files\ngroup: files\n")
    server = _local_mirror(dc_net_file, tmp_path / "www")
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME", W.ENV_DIR)}
    env.update(SQUEEZENET_EDGE_MIRROR=f"http://127.0.0.1:{server.server_port}/", TMPDIR=str(tmp_path / "tmp"),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    (tmp_path / "tmp").mkdir()
    script = ("import os; from convert.weights import resolve; "
              "print(os.path.expanduser('~')); print(resolve('deep-compression'))")
    mounts = 'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/nsswitch.conf && shift 2 && "$@"'
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts, "sh",
                               tmp_path / "passwd", tmp_path / "nsswitch.conf", sys.executable, "-c", script],
                              cwd=job, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    home, path = proc.stdout.split()
    assert home == "~"  # the situation: no home to be found
    assert list(job.iterdir()) == []  # nothing written into the checkout
    assert Path(path).is_relative_to(tmp_path / "tmp") and Path(path).read_bytes() == dc_net_file.read_bytes()


def test_a_read_only_cache_says_where_else_to_keep_the_weights(dc_net_file, monkeypatch, tmp_path):
    """A read-only home (a CI container's): the download cannot be kept there. It ended in `error: /ro: Read-only
    file system`; now the one line says which variables fix it."""
    from realworld import small_filesystem

    monkeypatch.delenv(W.ENV_DIR, raising=False)
    with small_filesystem(tmp_path / "home", read_only=True) as home:
        monkeypatch.setenv("XDG_CACHE_HOME", str(home))
        with pytest.raises(WeightsError) as e:
            W.resolve("deep-compression", fetch=lambda url: dc_net_file.read_bytes())
    assert str(e.value) == (f"{home / 'squeezenet-edge' / 'weights'}: cannot keep the downloaded "
                            "compressed_SqueezeNet.net there (Read-only file system); set $XDG_CACHE_HOME to a "
                            "writable folder, or put the file in a directory named by $SQUEEZENET_EDGE_WEIGHTS_DIR")


def test_wrong_sha256(dc_net_file, monkeypatch, tmp_path):
    bad = tmp_path / "compressed_SqueezeNet.net"
    data = bytearray(dc_net_file.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    monkeypatch.setenv(W.ENV_DIR, str(tmp_path))
    with pytest.raises(WeightsError, match="sha256"):
        W.resolve("deep-compression")
    monkeypatch.setenv(W.ENV_DIR, str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    with pytest.raises(WeightsError, match="sha256"):  # a download that does not match is refused
        W.resolve("deep-compression", fetch=lambda u: bytes(data))
    assert not (tmp_path / "c" / "squeezenet-edge" / "weights" / "compressed_SqueezeNet.net").exists()


def test_state_dict_checkpoint_round_trip(tmp_path):
    model = create_model("squeezenet1_1", num_classes=10)
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded, record = W.load_model(str(path), arch="squeezenet1_1")
    assert record.num_classes == 10 and record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_shape_mismatch_names_the_key(tmp_path):
    path = tmp_path / "v11.pth"
    torch.save(create_model("squeezenet1_1").state_dict(), path)
    with pytest.raises(WeightsError, match=r"features.0.weight has shape \(64, 3, 3, 3\), the model expects \(96, 3, 7, 7\)"):
        W.load_model(str(path), arch="squeezenet1_0")


class Evil:
    """Unpickling it runs os.mkdir(marker): the side effect the test looks for."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_objects_are_refused(tmp_path):
    for i, save in enumerate((torch.save, lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)))):
        marker = tmp_path / f"code-ran-{i}"
        path = tmp_path / f"evil-{i}.pth"
        save({"features.0.weight": Evil(marker)}, path)
        with pytest.raises(WeightsError, match="not a loadable weights-only checkpoint"):
            W.load_model(str(path))
        assert not marker.exists(), "loading the checkpoint ran code from it"
    photo = tmp_path / "photo.pth"  # a photo given as --weights: said so, not "holds Python objects"
    photo.write_bytes((Path(__file__).resolve().parents[1] / "calib_data" / "opencv_orange.jpg").read_bytes())
    with pytest.raises(WeightsError, match="photo.pth: not a PyTorch checkpoint"):
        W.load_model(str(photo))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError):
        W.load_model(str(garbage))


def test_net_file_by_path(dc_net_file):
    model, record = W.load_model(str(dc_net_file))
    assert record.name == "squeezenet1_0_deep_compression"
    assert model.classifier[1].padding == (1, 1)  # Caffe's conv10 pad: 1


def _three_class_checkpoint() -> tuple:
    """A fresh 3-class SqueezeNet v1.1 and a good training record for it, as `convert train` writes."""
    pp = {"input_size": [32, 32], "resize": [32, 32], "channel_order": "RGB", "mean": [0.5, 0.5, 0.5],
          "std": [0.25, 0.25, 0.25], "interpolation": "linear", "crop": "center"}
    return create_model("squeezenet1_1", num_classes=3), {
        "format": W.TRAINING_FORMAT, "name": "porch", "arch": "squeezenet1_1", "arch_kwargs": {},
        "labels": ["empty", "parcel", "person"], "preprocessing": pp}


def test_training_record_is_checked_before_use(tmp_path):
    """A training checkpoint's record names the architecture, classes and preprocessing; every field is
    untrusted: a wrong type or an unbounded size is refused in one line, a good record is applied."""
    model, good = _three_class_checkpoint()
    path = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "record": good}, path)
    loaded, record = W.load_model(str(path))
    assert record.arch == "squeezenet1_1" and record.labels == ("empty", "parcel", "person") and record.wnids == ()
    assert record.preprocessing.input_size == (32, 32) and loaded.classifier[1].out_channels == 3
    for field, value, expect in (("labels", ["x" * 10_000] * 3, "'labels' malformed"),
                                 ("labels", "empty", "'labels' malformed"),
                                 ("labels", ["empty", "par\ncel", "person"], "'labels' malformed"),
                                 ("arch", {"evil": 1}, "'arch' malformed"),
                                 ("arch_kwargs", {"k": [1] * 10}, "'arch_kwargs' malformed"),
                                 ("calib_dir", "x" * 5000, "'calib_dir' malformed"),
                                 ("preprocessing", {"input_size": "big"}, "training record")):
        torch.save({"model": model.state_dict(), "record": {**good, field: value}}, path)
        with pytest.raises(WeightsError, match=expect):
            W.load_model(str(path))


def test_hostile_arch_kwargs_are_one_line_before_anything_is_built(tmp_path):
    """A training record's arch_kwargs go to the model builder: an unknown argument, a num_classes beside the
    labels', a value of the wrong kind or out of range, or sizes that would take 48 GB (base_e=1e9) or overflow
    are refused by every command that loads weights, in one line naming the file and the field, and the
    model's size is bounded before any of it is allocated."""
    from realworld import convert_main, one_error_line

    model, good = _three_class_checkpoint()
    path = tmp_path / "best.pt"
    for arch, kwargs in (("squeezenet1_1", {"evil": 1}), ("squeezenet1_1", {"num_classes": 3}),
                         ("squeezenet1_1", {"bypass": "weird"}), ("squeezenet1_1", {"dropout": "x"}),
                         ("squeezenet1_1", {"final_conv_padding": 10**6}), ("squeezenet1_1", {"meta": "x"}),
                         ("squeezenet_custom", {"base_e": "abc"}),
                         ("squeezenet_custom", {"base_e": 0}), ("squeezenet_custom", {"base_e": 10**30}),
                         ("squeezenet_custom", {"base_e": 10**9})):
        torch.save({"model": model.state_dict(), "record": {**good, "arch": arch, "arch_kwargs": kwargs}}, path)
        with pytest.raises(WeightsError, match=r"best.pt: training record field 'arch_kwargs'") as info:
            W.load_model(str(path))
        assert "refused by" in str(info.value) or "holds num_classes" in str(info.value), info.value  # the cause
    assert "100,000,000 expected" in str(info.value)  # the last one: counted, not allocated
    for args in (("evaluate", "--weights", path, "--val", tmp_path),
                 ("tflite", "--weights", path, "--out", tmp_path / "m.tflite"),
                 ("compress", "--weights", path, "--out", tmp_path / "m.sqz")):
        assert "training record field 'arch_kwargs'" in one_error_line(convert_main(*args))
    assert not list(tmp_path.glob("m*"))


def test_a_cache_folder_in_the_temporary_folder_must_be_this_users_own(tmp_path, monkeypatch):
    """Without a home the cache is squeezenet-edge-UID/ in the shared temporary folder, a name anyone can
    guess: another user could make it first and swap a file between its sha256 check and its loading. It is
    made 0700, and refused in one line unless it is this user's own real folder that no one else may write."""
    import stat
    import tempfile

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # no home to be found (as in the test above)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    private = tmp_path / f"squeezenet-edge-{os.getuid()}"
    assert W.cache_dir() == private / "squeezenet-edge" / "weights"
    assert stat.S_IMODE(private.lstat().st_mode) == 0o700
    private.chmod(0o777)  # made by someone else, open to all
    with pytest.raises(W.WeightsError, match="not a private folder of this user"):
        W.cache_dir()
    private.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    private.symlink_to(tmp_path / "elsewhere")  # a link to a folder someone else chose
    with pytest.raises(W.WeightsError, match="not a private folder of this user"):
        W.cache_dir()
    if os.geteuid() == 0:  # another user's folder, however private
        private.unlink()
        private.mkdir(mode=0o700)
        os.chown(private, 65534, 65534)
        with pytest.raises(W.WeightsError, match="not a private folder of this user"):
            W.cache_dir()
