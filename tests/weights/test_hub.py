"""weights.hub: downloads through huggingface_hub into the Hugging Face cache, against a Hub served on
127.0.0.1 (tests/http_server.py). huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE
once, at import: the tests in this process set its constants (`use_endpoint`, tests/conftest.py), and
one test runs a fresh process with the variables, as a user does."""

import hashlib
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.utils import _http

import weights
from pipeline import PARAMETERS_KEY, read_replay, resolve_weights
from run_sample import main
from tests.checkpoints import write_checkpoint
from tests.helpers import run_main, text_chunks
from tests.http_server import FakeHub, git_sha1, use_endpoint
from weights import catalog
from weights.catalog import SD15_FILE, SD15_REPO, SDXL_FILE, SDXL_REPO
from weights.errors import WeightsError
from weights.hub import hub_file, hub_folder

REPO = "test-org/tiny-sd"
FILE = "tiny-pruned-emaonly.safetensors"
DATA = random.Random(0).randbytes(200_000)
SHA256 = hashlib.sha256(DATA).hexdigest()
CAT = "a photo of a cat"
LOCAL_COPY = "To use a local copy instead, give its path (a .safetensors file or a diffusers folder)."


@pytest.fixture
def server(monkeypatch):
    """A Hub holding REPO/FILE, online (tests/conftest.py makes every test offline with its own cache)."""
    hub = FakeHub()
    hub.add(REPO, FILE, DATA)
    use_endpoint(monkeypatch, hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield hub
    hub.close()


@pytest.fixture
def cdn():
    """A second server, on another port, that holds the blobs the Hub redirects to."""
    cdn = FakeHub()
    yield cdn
    cdn.close()


def offline(monkeypatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 does at import


def no_retry_waits(monkeypatch) -> None:
    # huggingface_hub retries a refused connection 5 times with 1 + 2 + 4 + 8 + 8 s of backoff
    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=lambda seconds: None))


def repo_dir() -> Path:
    return Path(constants.HF_HUB_CACHE) / "models--test-org--tiny-sd"


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def download_error(*args) -> str:
    with pytest.raises(WeightsError) as caught:
        hub_file(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- the cache layout ------------------------------------------------------------------------------------


def test_fresh_download_builds_the_huggingface_cache_layout(server):
    path = hub_file(REPO, FILE)

    assert path == repo_dir() / "snapshots" / server.commit / FILE
    assert path.is_symlink() and os.readlink(path) == f"../../blobs/{SHA256}"
    assert (repo_dir() / "blobs" / SHA256).read_bytes() == DATA
    assert (repo_dir() / "refs" / "main").read_text() == server.commit
    assert sorted(p.name for p in (repo_dir() / "blobs").iterdir()) == [SHA256]  # no .incomplete left
    assert server.paths() == [f"/{REPO}/resolve/main/{FILE}", f"/blobs/{SHA256}"]


def test_second_call_makes_no_request(server):
    first = hub_file(REPO, FILE)
    server.requests.clear()
    assert hub_file(REPO, FILE) == first
    assert server.requests == []


def test_commit_hash_revision_uses_its_snapshot_and_writes_no_ref(server):
    path = hub_file(REPO, FILE, revision=server.commit)
    assert path == repo_dir() / "snapshots" / server.commit / FILE
    assert not (repo_dir() / "refs").exists()
    server.requests.clear()
    assert hub_file(REPO, FILE, revision=server.commit) == path
    assert server.requests == []


def test_file_in_a_subfolder_links_back_to_blobs(server):
    server.add(REPO, "unet/diffusion_pytorch_model.safetensors", DATA)
    path = hub_file(REPO, "unet/diffusion_pytorch_model.safetensors")
    assert os.readlink(path) == f"../../../blobs/{SHA256}"
    assert path.read_bytes() == DATA


def test_small_git_file_is_stored_under_its_git_etag(server):
    config = b'{"_class_name": "StableDiffusionPipeline"}'
    server.add(REPO, "model_index.json", config)
    server.mode = "git"  # served by the Hub itself, not redirected to LFS storage
    path = hub_file(REPO, "model_index.json")
    assert os.readlink(path) == f"../../blobs/{git_sha1(config)}"
    assert path.read_bytes() == config


def test_empty_file_is_cached_too(server):
    server.add(REPO, "empty.txt", b"")
    assert hub_file(REPO, "empty.txt").read_bytes() == b""


def test_blob_already_cached_for_another_revision_is_linked_without_download(server):
    hub_file(REPO, FILE)
    server.requests.clear()
    server.commit = "fedcba9876543210fedcba9876543210fedcba98"  # a new commit, same file content

    path = hub_file(REPO, FILE, revision=server.commit)
    assert path == repo_dir() / "snapshots" / server.commit / FILE
    assert path.read_bytes() == DATA
    assert [seen.method for seen in server.requests] == ["HEAD"]


def test_file_downloaded_by_huggingface_hub_is_reused_without_network(server):
    theirs = huggingface_hub.hf_hub_download(REPO, FILE)
    server.requests.clear()
    assert hub_file(REPO, FILE) == Path(theirs)
    assert server.requests == []


def test_file_downloaded_here_is_found_by_huggingface_hub(server):
    ours = hub_file(REPO, FILE)
    assert huggingface_hub.try_to_load_from_cache(REPO, FILE) == str(ours)
    assert huggingface_hub.try_to_load_from_cache(REPO, FILE, revision=server.commit) == str(ours)
    assert huggingface_hub.hf_hub_download(REPO, FILE, local_files_only=True) == str(ours)  # as diffusers


def test_dangling_snapshot_link_is_downloaded_again(server):
    path = hub_file(REPO, FILE)
    (repo_dir() / "blobs" / SHA256).unlink()  # e.g. a cache cleaner removed the blob
    assert hub_file(REPO, FILE) == path
    assert path.read_bytes() == DATA


def test_the_variables_set_before_the_process_starts_decide_endpoint_cache_and_offline(server, tmp_path):
    """What a user does: HF_ENDPOINT and HF_HUB_CACHE, then HF_HUB_OFFLINE=1, in the environment."""
    fetch = f"from weights.hub import hub_file; print(hub_file({REPO!r}, {FILE!r}))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path)}
    env["PYTHONPATH"] = os.getcwd()
    online = subprocess.run([sys.executable, "-c", fetch], env=env, capture_output=True, text=True)
    expected = tmp_path / "cache" / "models--test-org--tiny-sd" / "snapshots" / server.commit / FILE
    assert online.stdout.strip() == str(expected), online.stderr
    server.requests.clear()
    env |= {"HF_ENDPOINT": closed_port_url(), "HF_HUB_OFFLINE": "1"}
    offline = subprocess.run([sys.executable, "-c", fetch], env=env, capture_output=True, text=True)
    assert offline.stdout.strip() == str(expected), offline.stderr
    assert server.requests == []


# -- resuming and checking -------------------------------------------------------------------------------


def test_partial_file_from_an_earlier_attempt_is_resumed_with_range(server):
    partial = repo_dir() / "blobs" / f"{SHA256}.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(DATA[:123_456])

    assert hub_file(REPO, FILE).read_bytes() == DATA
    blob_requests = [seen for seen in server.requests if seen.path.startswith("/blobs/")]
    assert [seen.headers.get("Range") for seen in blob_requests] == ["bytes=123456-"]


def test_interrupted_download_is_one_line_keeps_its_bytes_and_the_next_call_resumes(server, monkeypatch):
    # huggingface_hub writes what it received in chunks of 10 MB; here 10 kB, as for a multi-GB file
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 10_000)
    server.cuts = [70_000]
    message = download_error(REPO, FILE)
    assert "broke off" in message and "resume" in message and LOCAL_COPY in message
    assert (repo_dir() / "blobs" / f"{SHA256}.incomplete").read_bytes() == DATA[:70_000]
    assert list((repo_dir() / "snapshots").rglob(FILE)) == []  # nothing under the file's name

    server.requests.clear()
    assert hub_file(REPO, FILE).read_bytes() == DATA
    assert server.requests[-1].headers.get("Range") == "bytes=70000-"


def test_corrupted_body_fails_the_hash_check_and_is_deleted(server):
    server.corrupt = True
    message = download_error(REPO, FILE)
    assert f"not the announced {SHA256}" in message and "deleted" in message
    assert list((repo_dir() / "blobs").iterdir()) == []
    assert list((repo_dir() / "snapshots").rglob(FILE)) == []
    assert huggingface_hub.try_to_load_from_cache(REPO, FILE) is None


def test_a_file_the_project_names_must_have_its_pinned_sha256(server):
    server.add(SD15_REPO, SD15_FILE, DATA)  # bytes the Hub announces truly, but not the release
    message = download_error(SD15_REPO, SD15_FILE)
    assert f"have sha256 {SHA256}, not the pinned {catalog.PINNED_SHA256[SD15_REPO, SD15_FILE]}" in message
    assert huggingface_hub.try_to_load_from_cache(SD15_REPO, SD15_FILE) is None


# -- environment -----------------------------------------------------------------------------------------


def test_hf_token_goes_to_the_hub_but_not_to_the_cdn_it_redirects_to(monkeypatch, cdn):
    hub = FakeHub(blob_server=cdn)
    try:
        hub.add(REPO, FILE, DATA)
        use_endpoint(monkeypatch, hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        assert hub_file(REPO, FILE).read_bytes() == DATA
        assert [seen.headers.get("Authorization") for seen in hub.requests] == ["Bearer hf_secret"]
        assert [seen.headers.get("Authorization") for seen in cdn.requests] == [None]
    finally:
        hub.close()


def test_token_saved_by_hf_auth_login_is_used(server):
    Path(constants.HF_TOKEN_PATH).write_text("hf_from_file\n")
    hub_file(REPO, FILE)
    assert server.requests[0].headers.get("Authorization") == "Bearer hf_from_file"


def test_no_token_sends_no_authorization(server):
    hub_file(REPO, FILE)
    assert all("Authorization" not in seen.headers for seen in server.requests)


def test_offline_mode_returns_a_cached_file_without_network(server, monkeypatch):
    path = hub_file(REPO, FILE)
    server.requests.clear()
    offline(monkeypatch)
    assert hub_file(REPO, FILE) == path
    assert server.requests == []


def test_offline_mode_refuses_a_missing_file_without_network(server, monkeypatch):
    offline(monkeypatch)
    message = download_error(REPO, FILE)
    assert "not in the Hugging Face cache" in message and LOCAL_COPY in message
    assert server.requests == []


# -- failures: one line saying what, from where, why, and what to do -------------------------------------


def test_unreachable_endpoint_gives_a_one_line_error(server, monkeypatch):
    url = closed_port_url()
    use_endpoint(monkeypatch, url)
    no_retry_waits(monkeypatch)
    message = download_error(REPO, FILE)
    assert message.startswith(f"could not download {REPO}/{FILE} (revision main) from {url}: ")
    assert "refused" in message and LOCAL_COPY in message


def test_missing_file_gives_404_error(server):
    message = download_error(REPO, "no-such-file.safetensors")
    assert f"from {server.url}: HTTP 404" in message and "Entry not found" in message
    assert "; check the repo id, file name and revision" in message and LOCAL_COPY in message


def test_missing_revision_gives_404_error(server):
    assert "HTTP 404" in download_error(REPO, FILE, "v9")


@pytest.mark.parametrize("status", [401, 403])
def test_unauthorised_error_mentions_hf_token(server, status):
    server.status = status
    message = download_error(REPO, FILE)
    assert f"HTTP {status}" in message and "HF_TOKEN" in message and LOCAL_COPY in message


def test_a_server_error_says_to_try_again_later(server, monkeypatch):
    server.status = 503
    no_retry_waits(monkeypatch)
    message = download_error(REPO, FILE)
    assert "HTTP 503" in message and "; the Hub is in trouble, try again later. " + LOCAL_COPY in message


def test_a_host_name_that_does_not_resolve_points_at_the_network_or_hf_endpoint(server, monkeypatch):
    use_endpoint(monkeypatch, "http://no-such-hub.invalid")  # .invalid never resolves (RFC 2606)
    no_retry_waits(monkeypatch)
    message = download_error(REPO, FILE)
    assert "host name lookup failed (" in message and "): no network, or a wrong HF_ENDPOINT" in message


def test_endpoint_that_is_not_a_hub_is_named_as_such(server):
    server.mode = "static"  # the bytes, without X-Repo-Commit or ETag
    message = download_error(REPO, FILE)
    assert "X-Repo-Commit" in message and "check HF_ENDPOINT" in message


def test_failed_download_keeps_what_was_already_cached(server):
    path = hub_file(REPO, FILE)
    server.add(REPO, "other.safetensors", b"other")
    server.status = 404
    download_error(REPO, "other.safetensors")
    assert path.read_bytes() == DATA


@pytest.mark.parametrize(
    ("repo_id", "filename", "revision"),
    [("not-a-repo", FILE, "main"), ("a/b/c", FILE, "main"), (REPO, "../../x", "main"), (REPO, FILE, "../x")],
)
def test_bad_names_are_refused_before_any_request(server, repo_id, filename, revision):
    download_error(repo_id, filename, revision)
    assert server.requests == []


# -- the default weights from the command line -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("single"), layout="single")


def one_line_error(capsys, *argv: str) -> str:
    code, out, err = run_main(main, capsys, *argv)
    assert code == 2, out + err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.removesuffix("\n")


def test_default_weights_offline_with_an_empty_cache_is_one_line(tmp_path, capsys):
    error = one_line_error(capsys, "--prompt", CAT, "--out", str(tmp_path / "out"), "--device", "cpu")
    assert error == (
        f"run_sample.py: error: {SD15_REPO}/{SD15_FILE} (revision main) is not in the Hugging Face cache "
        f"{constants.HF_HUB_CACHE} and offline mode (HF_HUB_OFFLINE) is on: turn it off to download the "
        "file. To use a local copy instead, give its path (a .safetensors file or a diffusers folder)."
    )


def test_default_weights_without_network_is_one_line(tmp_path, monkeypatch, capsys):
    endpoint = closed_port_url()
    use_endpoint(monkeypatch, endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    no_retry_waits(monkeypatch)
    error = one_line_error(capsys, "--prompt", CAT, "--out", str(tmp_path / "out"), "--device", "cpu")
    assert error == (
        f"run_sample.py: error: could not download {SD15_REPO}/{SD15_FILE} (revision main) from {endpoint}: "
        "Connection refused. To use a local copy instead, give its path (a .safetensors file or a "
        "diffusers folder)."
    )


def test_default_weights_are_fetched_once_then_used_offline(
    tiny_single, server, tmp_path, monkeypatch, capsys
):
    sha256 = server.add(SD15_REPO, SD15_FILE, tiny_single.read_bytes())
    monkeypatch.setitem(catalog.PINNED_SHA256, (SD15_REPO, SD15_FILE), sha256)  # the tiny stand-in
    server.requests.clear()
    argv = [
        "--prompt",
        CAT,
        "--steps",
        "1",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--height",
        "64",
        "--width",
        "64",
    ]
    assert run_main(main, capsys, *argv, "--out", str(tmp_path / "online"))[0] == 0
    assert server.paths() == [f"/{SD15_REPO}/resolve/main/{SD15_FILE}", f"/blobs/{sha256}"]
    server.close()
    offline(monkeypatch)
    assert run_main(main, capsys, *argv, "--out", str(tmp_path / "offline"))[0] == 0
    (made,) = (tmp_path / "offline").iterdir()
    settings = read_replay(made)[0]
    assert (settings.weights, settings.weights_sha256, settings.model) == (
        SD15_REPO,
        sha256,
        "v1-5-pruned-emaonly",
    )
    assert f"Model hash: {sha256[:10]}, Model: v1-5-pruned-emaonly" in text_chunks(made)[PARAMETERS_KEY]


# -- SDXL: a short name for its single file, and diffusers-folder repos fetched file by file -----------------


def test_sdxl_by_short_name_or_repo_id_is_sd_xl_base_single_file(server, monkeypatch):
    sha256 = server.add(SDXL_REPO, SDXL_FILE, DATA)
    monkeypatch.setitem(catalog.PINNED_SHA256, (SDXL_REPO, SDXL_FILE), sha256)  # a stand-in file
    snapshot = (
        Path(constants.HF_HUB_CACHE)
        / "models--stabilityai--stable-diffusion-xl-base-1.0"
        / "snapshots"
        / server.commit
    )
    assert resolve_weights("sdxl") == snapshot / SDXL_FILE
    assert server.paths() == [f"/{SDXL_REPO}/resolve/main/{SDXL_FILE}", f"/blobs/{sha256}"]
    server.requests.clear()
    assert resolve_weights(SDXL_REPO) == snapshot / SDXL_FILE and server.requests == []


XL_REPO = "test-org/tiny-xl"


@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory):
    """A tiny SDXL diffusers folder (DreamShaper XL's layout) plus files weights.load never reads."""
    folder = write_checkpoint(tmp_path_factory.mktemp("xl"), "diffusers", kind="sdxl")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle nobody should fetch")
    (folder / "README.md").write_text("# tiny XL")
    return folder


def publish(server, folder, repo=XL_REPO, skip=()) -> dict[str, str]:
    """Every file of `folder` as a file of `repo`; returns path in repo -> sha256."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    names = [p.relative_to(folder).as_posix() for p in files]
    return {
        n: server.add(repo, n, p.read_bytes()) for n, p in zip(names, files, strict=True) if n not in skip
    }


def asked(server) -> list[str]:
    """The repo files asked for (their resolve HEADs), in order."""
    return [p.split("/resolve/", 1)[1].split("/", 1)[1] for p in server.paths("HEAD") if "/resolve/" in p]


def test_a_diffusers_folder_repo_fetches_exactly_the_files_load_reads(server, xl_folder):
    publish(server, xl_folder)
    folder = resolve_weights(XL_REPO)
    assert folder == Path(constants.HF_HUB_CACHE) / "models--test-org--tiny-xl" / "snapshots" / server.commit
    assert asked(server)[0] == "unet/config.json"  # the kind first, at main
    assert sorted(asked(server)) == [  # then the rest at once, in parallel
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert all(f"/{XL_REPO}/resolve/{server.commit}/" in p for p in server.paths("HEAD")[1:])  # one commit
    listing = f"/api/models/{XL_REPO}/revision/{server.commit}"
    assert [p for p in server.paths() if p.startswith("/api/")] == [
        listing,
        listing,
    ]  # ours, snapshot_download's
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        asked(server)
    )  # README.md and the pickle were never fetched; tokenizer_2's files share tokenizer's blobs
    assert weights.load(folder).kind == "sdxl"
    server.requests.clear()
    assert resolve_weights(XL_REPO) == folder and server.requests == []  # all cached, main's commit too


def test_offline_a_fetched_folder_repo_needs_no_network(server, xl_folder, monkeypatch):
    publish(server, xl_folder)
    folder = resolve_weights(XL_REPO)
    server.requests.clear()
    offline(monkeypatch)
    assert resolve_weights(XL_REPO) == folder and server.requests == []


def test_half_precision_takes_the_fp16_variant_where_there_is_one(server, xl_folder, tmp_path):
    publish(server, xl_folder)
    fp16 = write_checkpoint(tmp_path, "diffusers", kind="sdxl", dtype=torch.float16)
    unet = "unet/diffusion_pytorch_model.fp16.safetensors"
    server.add(XL_REPO, unet, (fp16 / unet).read_bytes())
    folder = resolve_weights(XL_REPO, torch.float16)
    got = [p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors")]
    assert unet in got and "unet/diffusion_pytorch_model.safetensors" not in got
    assert "vae/diffusion_pytorch_model.safetensors" in got  # no fp16 variant of it: the full file
    assert "vae/diffusion_pytorch_model.fp16.safetensors" not in asked(server)  # the listing lacks it
    assert weights.load(folder, dtype=torch.float16).unet.out[2].weight.dtype == torch.float16
    server.requests.clear()
    assert resolve_weights(XL_REPO, torch.float16) == folder and server.requests == []  # the lack is cached


def test_a_repo_fetched_for_one_precision_fetches_the_other_preferred_file_for_the_other(
    server, xl_folder, tmp_path
):
    publish(server, xl_folder)
    fp16 = write_checkpoint(tmp_path, "diffusers", kind="sdxl", dtype=torch.float16)
    unet = "unet/diffusion_pytorch_model.fp16.safetensors"
    server.add(XL_REPO, unet, (fp16 / unet).read_bytes())
    folder = resolve_weights(XL_REPO)
    server.requests.clear()
    assert resolve_weights(XL_REPO, torch.float16) == folder
    assert asked(server) == [unet]  # not the full-precision file already cached


def test_with_a_separate_vae_the_folders_vae_is_not_fetched(server, xl_folder):
    publish(server, xl_folder)
    resolve_weights(XL_REPO, bundled_vae=False)
    assert not any(name.startswith("vae/") for name in asked(server))


def test_a_folder_repo_without_a_required_file_is_refused_in_one_line(server, xl_folder):
    publish(server, xl_folder, skip={"text_encoder_2/model.safetensors"})
    with pytest.raises(WeightsError) as caught:
        resolve_weights(XL_REPO)
    message = str(caught.value)
    assert "\n" not in message and "has none of text_encoder_2/model.safetensors" in message
    assert "not a complete diffusers folder" in message and LOCAL_COPY in message


def test_offline_a_folder_repo_the_cache_lacks_a_file_of_is_refused_in_one_line(
    server, xl_folder, monkeypatch
):
    publish(server, xl_folder)
    resolve_weights(XL_REPO, bundled_vae=False)
    server.requests.clear()
    offline(monkeypatch)
    with pytest.raises(WeightsError) as caught:
        resolve_weights(XL_REPO)
    assert str(caught.value) == (
        f"{XL_REPO}/vae/config.json (revision {server.commit}) is not in the Hugging Face cache "
        f"{constants.HF_HUB_CACHE} and offline mode (HF_HUB_OFFLINE) is on: turn it off to download the "
        f"file. {LOCAL_COPY}"
    )
    assert server.requests == []


def test_every_corrupted_file_of_a_folder_repo_is_deleted_and_refused_in_one_line(server, xl_folder):
    publish(server, xl_folder)
    config = hub_file(XL_REPO, "unet/config.json")
    server.corrupt = True
    with pytest.raises(WeightsError) as caught:
        resolve_weights(XL_REPO)
    message = str(caught.value)
    assert "\n" not in message and "not the announced" in message and "(deleted them)" in message
    assert message.endswith(LOCAL_COPY)
    snapshot = config.parent.parent
    assert [p for p in snapshot.rglob("*") if p.is_file()] == [config]  # nothing else under a name


def test_an_interrupted_folder_download_is_one_line_and_the_next_call_completes_it(server, xl_folder):
    publish(server, xl_folder)
    hub_file(XL_REPO, "unet/config.json")
    server.cuts = [10]
    with pytest.raises(WeightsError) as caught:
        resolve_weights(XL_REPO)
    assert str(caught.value) == (
        f"could not download {XL_REPO} (revision {server.commit}) from {server.url}: the connection broke "
        f"off mid-file; run again to resume the download. {LOCAL_COPY}"
    )
    assert weights.load(resolve_weights(XL_REPO)).kind == "sdxl"


def test_a_refused_folder_listing_is_one_line(server, xl_folder):
    publish(server, xl_folder)
    hub_file(XL_REPO, "unet/config.json")
    server.status = 401
    with pytest.raises(WeightsError) as caught:
        hub_folder(XL_REPO, weights.folder_files("sdxl", torch.float32), server.commit)
    assert str(caught.value) == (
        f"could not download {XL_REPO} (revision {server.commit}) from {server.url}: HTTP 401 Unauthorized "
        "(Invalid credentials in Authorization header); for a private or gated repo, accept its terms on "
        f"the Hub and set HF_TOKEN. {LOCAL_COPY}"
    )


def test_the_folder_listing_carries_hf_token(server, xl_folder, monkeypatch):
    publish(server, xl_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    resolve_weights(XL_REPO)
    listings = [seen for seen in server.requests if seen.path.startswith("/api/")]
    assert [seen.headers.get("Authorization") for seen in listings] == ["Bearer hf_secret"] * 2


def test_a_repo_named_alone_that_is_no_diffusers_folder_asks_for_its_file(server):
    with pytest.raises(WeightsError) as caught:
        resolve_weights(REPO)
    assert str(caught.value) == (
        f"{REPO} (revision main) has no unet/config.json, so it is not a diffusers folder: name its "
        f"weights file, {REPO}/FILE.safetensors"
    )
