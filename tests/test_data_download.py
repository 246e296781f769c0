"""sca_lib.data.download against a loopback HTTP server (127.0.0.1 only; no external host).

The server serves a small tar of a synthetic devkit, packed like VOCtrainval_11-May-2012.tar
(``VOCdevkit/VOC2012/...`` inside), and supports HTTP Range so that resuming can be tested.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sca_lib.data import VOCDetection, generate_synthetic_voc, make_config
from sca_lib.data.download import MARKER, VOC2012_TRAINVAL, ArchiveSpec, DownloadError, download_voc
from sca_lib.data.__main__ import main as cli

NAME = VOC2012_TRAINVAL.filename


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    src = tmp_path_factory.mktemp("src")
    generate_synthetic_voc(src, make_config("target", "fast", n_train=6, n_val=4, seed=11))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(src / "VOCdevkit", arcname="VOCdevkit")
    return buf.getvalue()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Keep urllib from sending loopback requests to a proxy configured in the environment."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


class _Server:
    def __init__(self) -> None:
        self.files = {}
        self.requests = []  # (path, Range header)
        self.cut_once = set()  # paths whose first full response is cut in the middle
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng[6:].split("-")[0]) if rng and rng.startswith("bytes=") else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                body = data[start:]
                if rng:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.cut_once:
                    server.cut_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def served(self, path):
        return [r for r in self.requests if r[0] == path]


@pytest.fixture
def server(archive):
    s = _Server()
    s.files["/voc/" + NAME] = archive
    mid = len(archive) // 2
    s.files["/bad/" + NAME] = archive[:mid] + bytes([archive[mid] ^ 0xFF]) + archive[mid + 1:]  # one byte off
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _dead_url() -> str:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{NAME}"


def _spec(archive: bytes, mirrors=()) -> ArchiveSpec:
    return ArchiveSpec(filename=NAME, md5=hashlib.md5(archive).hexdigest(), size=len(archive), mirrors=tuple(mirrors))


def _leftovers(root: Path):
    """Temporary files and folders (``.<name>.tmp<PID>``, partial downloads) left in ``root``."""
    return sorted(p.name for p in root.iterdir() if ".tmp" in p.name or ".extract" in p.name or p.name.endswith(".part"))


def test_voc2012_spec_is_the_official_archive():
    assert VOC2012_TRAINVAL.md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert VOC2012_TRAINVAL.filename == "VOCtrainval_11-May-2012.tar"
    assert VOC2012_TRAINVAL.mirrors[0].startswith("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/")


def test_good_download_extracts_a_verified_tree(server, archive, tmp_path):
    root = tmp_path / "data"
    spec = _spec(archive, [server.url + "/voc/" + NAME])
    assert download_voc(root, spec, verbose=False) == root
    dk = root / "VOCdevkit" / "VOC2012"
    assert (dk / MARKER).is_file() and hashlib.md5(archive).hexdigest() in (dk / MARKER).read_text()
    assert len(VOCDetection(root, split="trainval")) == 10
    assert not (root / NAME).exists(), "the archive is deleted after extraction by default"
    assert _leftovers(root) == []
    # a valid tree is not downloaded again
    n = len(server.requests)
    download_voc(root, spec, verbose=False)
    assert len(server.requests) == n


def test_wrong_md5_extracts_nothing(server, archive, tmp_path):
    root = tmp_path / "data"
    spec = _spec(archive, [server.url + "/bad/" + NAME])
    with pytest.raises(DownloadError, match="MD5 mismatch") as e:
        download_voc(root, spec, verbose=False)
    assert "Kaggle" in str(e.value) and "--archive" in str(e.value)
    assert not (root / "VOCdevkit").exists()
    assert not (root / NAME).exists() and _leftovers(root) == []


def test_dead_first_mirror_falls_through_to_the_next(server, archive, tmp_path):
    root = tmp_path / "data"
    spec = _spec(archive, [_dead_url(), server.url + "/missing/" + NAME, server.url + "/bad/" + NAME,
                           server.url + "/voc/" + NAME])
    download_voc(root, spec, verbose=False, timeout=5)
    assert server.served("/missing/" + NAME) and server.served("/bad/" + NAME) and server.served("/voc/" + NAME)
    assert "voc/" + NAME in (root / "VOCdevkit" / "VOC2012" / MARKER).read_text()


def test_all_mirrors_dead_gives_manual_instructions(tmp_path, archive):
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as e:
        download_voc(root, _spec(archive, [_dead_url(), _dead_url()]), verbose=False, timeout=5)
    msg = str(e.value)
    assert msg.count("127.0.0.1") >= 2, "each mirror's failure is listed"
    for needle in ("--archive", "Kaggle", "kaggle datasets download", "VOC_ROOT", "synthetic", NAME):
        assert needle in msg
    assert not (root / "VOCdevkit").exists()


def test_resumes_a_partial_download(server, archive, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / (NAME + ".part")).write_bytes(archive[:5000])
    download_voc(root, _spec(archive, [server.url + "/voc/" + NAME]), verbose=False)
    assert server.served("/voc/" + NAME) == [("/voc/" + NAME, "bytes=5000-")]
    assert (root / "VOCdevkit" / "VOC2012" / MARKER).is_file()


def test_resumes_after_a_dropped_connection(server, archive, tmp_path):
    root = tmp_path / "data"
    server.cut_once.add("/voc/" + NAME)
    download_voc(root, _spec(archive, [server.url + "/voc/" + NAME]), verbose=False, timeout=5)
    reqs = server.served("/voc/" + NAME)
    assert len(reqs) == 2 and reqs[0][1] is None and reqs[1][1].startswith("bytes=")
    assert (root / "VOCdevkit" / "VOC2012" / MARKER).is_file()


def test_local_archive_is_verified_then_extracted(archive, tmp_path):
    tar = tmp_path / NAME
    tar.write_bytes(archive)
    root = tmp_path / "data"
    download_voc(root, _spec(archive), archive=tar, verbose=False)
    assert (root / "VOCdevkit" / "VOC2012" / MARKER).is_file() and tar.exists()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(archive[:100] + b"x" + archive[101:])
    root2 = tmp_path / "data2"
    with pytest.raises(DownloadError, match="MD5"):
        download_voc(root2, _spec(archive), archive=bad, verbose=False)
    assert not (root2 / "VOCdevkit").exists()


def test_archive_without_a_devkit_installs_nothing(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("README.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    tar = tmp_path / NAME
    tar.write_bytes(buf.getvalue())
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="complete VOCdevkit/VOC2012"):
        download_voc(root, _spec(buf.getvalue()), archive=tar, verbose=False)
    assert not (root / "VOCdevkit").exists() and _leftovers(root) == []


def test_incomplete_tree_is_replaced_and_kept_aside(server, archive, tmp_path):
    root = tmp_path / "data"
    half = root / "VOCdevkit" / "VOC2012"
    (half / "JPEGImages").mkdir(parents=True)
    download_voc(root, _spec(archive, [server.url + "/voc/" + NAME]), verbose=False)
    assert (half / MARKER).is_file()
    assert [p.name for p in (root / "VOCdevkit").iterdir() if p.name.startswith("VOC2012.replaced-")]


def test_cli_download_voc(server, archive, tmp_path, monkeypatch, capsys):
    """The CLI with a loopback mirror first; the built-in (external) mirrors are never reached."""
    monkeypatch.setattr("sca_lib.data.__main__.VOC2012_TRAINVAL", _spec(archive))  # no built-in mirrors
    root = tmp_path / "data"
    rc = cli(["download-voc", "--root", str(root), "--mirror", server.url + "/voc/" + NAME, "--keep-archive"])
    assert rc == 0 and (root / NAME).exists()
    assert cli(["download-voc", "--root", str(root), "--mirror", _dead_url()]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_extraction_folders_of_killed_runs_are_removed(archive, tmp_path, monkeypatch):
    """A run killed while extracting leaves ``.VOCtrainval-extract.tmp<PID>`` (2 GB for real VOC);
    the next run removes it. The default root is config.data_dir() ($SCA_DATA_DIR)."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = tmp_path / "data"
    stale = root / f".VOCtrainval-extract.tmp{dead.pid}" / "VOCdevkit" / "VOC2012"
    stale.mkdir(parents=True)
    (stale / "2008_000008.jpg").write_bytes(b"half")
    tar = tmp_path / NAME
    tar.write_bytes(archive)
    monkeypatch.setenv("SCA_DATA_DIR", str(root))
    download_voc(spec=_spec(archive), archive=tar, verbose=False)
    assert (root / "VOCdevkit" / "VOC2012" / MARKER).is_file()
    assert _leftovers(root) == []
