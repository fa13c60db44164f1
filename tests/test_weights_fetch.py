"""Pretrained weights: fetched from a local HTTP server (127.0.0.1 only), resumed, verified, refused."""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pytest
import torch
import torchvision.models as tvm
from conftest import train_once
from mlflow.tracking import MlflowClient

from xray_ablate.checksums import sha256_file
from xray_ablate.errors import UserError
from xray_ablate.models import FEATURE_BUILDERS
from xray_ablate.models import weights as weights_module
from xray_ablate.models.__main__ import main
from xray_ablate.models.fetch import part_path
from xray_ablate.models.weights import CHECKPOINTS, Checkpoint, cache_dir, ensure_checkpoint, load_state_dict


@dataclass
class Served:
    """Files served on 127.0.0.1, the requests seen (path, Range header), first responses to cut."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    cut_first: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before closing
    delay_s: float = 0.0  # before each response, so that parallel clients overlap


@pytest.fixture
def served():
    state = Served()

    class Handler(BaseHTTPRequestHandler):  # HTTP/1.0: one response per connection
        def do_GET(self):
            state.requests.append((self.path, self.headers.get("Range")))
            time.sleep(state.delay_s)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1)) \
                if self.headers.get("Range") else 0
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut = state.cut_first.pop(self.path, None)
            self.wfile.write(body[start:cut])  # cut: the connection closes mid-file

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def serve_standin(served: Served, monkeypatch, backbone: str, state: dict | None = None,
                  pinned: str | None = None) -> bytes:
    """Serve a stand-in checkpoint under the real file name and pin its hash (or ``pinned``)."""
    body = _bytes(state if state is not None else {"weight": torch.randn(64, 64, generator=torch.Generator()
                                                                        .manual_seed(0))})
    name = CHECKPOINTS[backbone].filename
    served.files[f"/{name}"] = body
    monkeypatch.setitem(CHECKPOINTS, backbone, Checkpoint(f"{served.base}/{name}",
                                                          pinned or hashlib.sha256(body).hexdigest()))
    return body


def test_fetch_downloads_with_a_progress_bar_and_prints_where_the_file_is(served, torch_home, monkeypatch,
                                                                          capsys):
    body = serve_standin(served, monkeypatch, "resnet50")
    main(["fetch", "resnet50"])
    path = torch_home / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert path.read_bytes() == body and not part_path(path).exists()
    out, err = capsys.readouterr()
    assert out.strip() == f"resnet50: {path} (downloaded, SHA-256 verified)"
    assert "resnet50-0676ba61.pth" in err and "100%" in err  # tqdm's bar on stderr
    assert served.requests == [("/resnet50-0676ba61.pth", None)]


def test_fetch_skips_a_present_valid_file(served, torch_home, monkeypatch, capsys):
    serve_standin(served, monkeypatch, "vgg19")
    main(["fetch", "vgg19"])
    path = cache_dir() / "vgg19-dcbb9e9d.pth"
    stamp = path.stat().st_mtime_ns
    capsys.readouterr()
    main(["fetch", "vgg19"])
    assert len(served.requests) == 1 and path.stat().st_mtime_ns == stamp
    assert capsys.readouterr().out.strip() == f"vgg19: {path} (already there, SHA-256 verified)"


def test_an_interrupted_transfer_resumes_with_a_range_request(served, torch_home, monkeypatch, capsys):
    body = serve_standin(served, monkeypatch, "inception_v3")
    half = len(body) // 2
    served.cut_first["/inception_v3_google-0cc3c7bd.pth"] = half
    main(["fetch", "inception_v3"])
    assert (cache_dir() / "inception_v3_google-0cc3c7bd.pth").read_bytes() == body
    assert served.requests == [("/inception_v3_google-0cc3c7bd.pth", None),
                               ("/inception_v3_google-0cc3c7bd.pth", f"bytes={half}-")]
    assert f"at {half} bytes; resuming" in capsys.readouterr().err


def test_a_part_file_left_by_an_earlier_call_is_continued_not_restarted(served, torch_home, monkeypatch):
    body = serve_standin(served, monkeypatch, "vgg16")
    part = part_path(cache_dir() / "vgg16-397923af.pth")
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:1000])  # e.g. the user pressed Ctrl-C
    main(["fetch", "vgg16", "--to", str(cache_dir())])
    assert served.requests == [("/vgg16-397923af.pth", "bytes=1000-")]
    assert (cache_dir() / "vgg16-397923af.pth").read_bytes() == body and not part.exists()


def test_fetch_to_another_folder(served, torch_home, monkeypatch, tmp_path, capsys):
    body = serve_standin(served, monkeypatch, "xception")
    main(["fetch", "xception", "--to", str(tmp_path / "carry")])
    assert (tmp_path / "carry" / "xception-43020ad28.pth").read_bytes() == body
    assert not cache_dir().exists()
    assert str(tmp_path / "carry" / "xception-43020ad28.pth") in capsys.readouterr().out


def test_a_hash_mismatch_deletes_the_download_and_is_one_line_exit_2(served, torch_home, monkeypatch, capsys):
    serve_standin(served, monkeypatch, "resnet50", pinned="0676ba61" + "0" * 56)
    with pytest.raises(SystemExit) as exit_info:
        main(["fetch", "resnet50"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: download of {served.base}/resnet50-0676ba61.pth has SHA-256 ")
    assert "expected 0676ba61" + "0" * 56 in err and "deleted" in err
    assert [p.name for p in cache_dir().iterdir()] == ["resnet50-0676ba61.pth.lock"]  # no file, no .part


def test_parallel_jobs_wanting_the_same_file_download_it_once(served, torch_home, monkeypatch):
    body = serve_standin(served, monkeypatch, "vgg19")
    served.delay_s = 0.5
    results = []
    jobs = [threading.Thread(target=lambda: results.append(ensure_checkpoint("vgg19", True))) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert len(served.requests) == 1 and len(results) == 3  # one waited download, not three writers
    assert (cache_dir() / "vgg19-dcbb9e9d.pth").read_bytes() == body


class _Payload:
    """Unpickling this (weights_only=False) would create a folder: the crafted checkpoint of issue 15."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_hand_copied_file_with_the_wrong_hash_is_refused_before_anything_is_unpickled(torch_home, tmp_path):
    marker = tmp_path / "payload-ran"
    path = cache_dir() / "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    torch.save({"conv1.weight": _Payload(str(marker))}, path)
    for attempt in (lambda: load_state_dict("resnet50"), lambda: load_state_dict("resnet50", True)):
        with pytest.raises(UserError) as err:
            attempt()
        message = str(err.value)
        assert "\n" not in message and str(path) in message
        assert f"expected {CHECKPOINTS['resnet50'].sha256}" in message
    assert not marker.exists() and path.exists()  # refused, not run, and the user's file kept


def test_missing_weights_name_the_file_and_both_ways_to_get_them(torch_home):
    with pytest.raises(UserError) as err:
        load_state_dict("vgg16")
    message = str(err.value)
    assert str(cache_dir() / "vgg16-397923af.pth") in message and "\n" not in message
    assert "`python -m xray_ablate.models fetch vgg16`" in message and "backbone.download=true" in message


@pytest.mark.slow
def test_backbone_download_true_fetches_before_a_run_that_finishes(served, torch_home, monkeypatch, make_cfg):
    # VGG16's conv features only (the loader never reads the classifier): 59 MB instead of 528.
    features = tvm.vgg.make_layers(tvm.vgg.cfgs["D"]).state_dict()
    serve_standin(served, monkeypatch, "vgg16", {f"features.{k}": v for k, v in features.items()})
    cfg = make_cfg("backbone=vgg16", "backbone.download=true", "image_size=32")
    run_id, _ = train_once(cfg)
    assert [request for request, _ in served.requests] == ["/vgg16-397923af.pth"]
    assert sha256_file(cache_dir() / "vgg16-397923af.pth") == CHECKPOINTS["vgg16"].sha256
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    state = torch.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint/best_model.pt"),
                       weights_only=True)
    assert torch.equal(state["features.0.0.weight"], features["0.weight"])  # the fetched weights, frozen


def test_the_pinned_table_covers_every_pretrained_backbone_with_its_published_file():
    assert set(CHECKPOINTS) == set(FEATURE_BUILDERS)
    library_urls = {"vgg16": tvm.VGG16_Weights.IMAGENET1K_V1.url, "vgg19": tvm.VGG19_Weights.IMAGENET1K_V1.url,
                    "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1.url,
                    "inception_v3": tvm.Inception_V3_Weights.IMAGENET1K_V1.url}
    import timm

    library_urls["xception"] = timm.models.get_pretrained_cfg("legacy_xception").url
    for name, checkpoint in CHECKPOINTS.items():
        assert checkpoint.url == library_urls[name], name  # what torchvision/timm would download
        published = re.search(r"-([0-9a-f]{8,})\.pth$", checkpoint.filename).group(1)
        assert checkpoint.sha256.startswith(published), name
        assert re.fullmatch(r"[0-9a-f]{64}", checkpoint.sha256) or name == "xception", name
    assert weights_module.cache_dir().name == "checkpoints"


def test_backbone_download_does_not_change_the_configuration_key(make_cfg):
    from xray_ablate.tracking.keys import config_key

    assert config_key(make_cfg("backbone=vgg16"), "cpu") == \
        config_key(make_cfg("backbone=vgg16", "backbone.download=true"), "cpu")
