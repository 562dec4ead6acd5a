"""weights.hub: downloads into the Hugging Face cache layout, against a Hub served on 127.0.0.1."""

import fcntl
import hashlib
import os
import random
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch

import weights
from pipeline import resolve_weights
from tests.checkpoints import write_checkpoint
from tests.http_server import FakeHub, git_sha1
from weights import hub as hub_module
from weights.errors import WeightsError
from weights.hub import SDXL_FILE, SDXL_REPO, hub_cache_dir, hub_file, is_local_path, parse_hub_spec

REPO = "test-org/tiny-sd"
FILE = "tiny-pruned-emaonly.safetensors"
DATA = random.Random(0).randbytes(200_000)
SHA256 = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean HF_* environment whose cache lives under tmp_path."""
    for name in (
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "XDG_CACHE_HOME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return monkeypatch


@pytest.fixture
def server(env):
    hub = FakeHub()
    hub.add(REPO, FILE, DATA)
    env.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.close()


@pytest.fixture
def cdn():
    """A second server, on another port, that holds the blobs the Hub redirects to."""
    cdn = FakeHub()
    yield cdn
    cdn.close()


def repo_dir() -> Path:
    return hub_cache_dir() / "models--test-org--tiny-sd"


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def download_error(*args, **kwargs) -> str:
    with pytest.raises(WeightsError) as caught:
        hub_file(*args, progress=False, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- the cache layout ------------------------------------------------------------------------------------


def test_fresh_download_builds_the_huggingface_cache_layout(server):
    path = hub_file(REPO, FILE, progress=False)

    assert path == repo_dir() / "snapshots" / server.commit / FILE
    assert path.is_symlink() and os.readlink(path) == f"../../blobs/{SHA256}"
    assert (repo_dir() / "blobs" / SHA256).read_bytes() == DATA
    assert (repo_dir() / "refs" / "main").read_text() == server.commit
    assert sorted(p.name for p in (repo_dir() / "blobs").iterdir()) == [SHA256]  # no .incomplete left
    assert server.paths() == [f"/{REPO}/resolve/main/{FILE}", f"/blobs/{SHA256}"]


def test_second_call_makes_no_request(server):
    first = hub_file(REPO, FILE, progress=False)
    server.requests.clear()
    assert hub_file(REPO, FILE, progress=False) == first
    assert server.requests == []


def test_commit_hash_revision_uses_its_snapshot_and_writes_no_ref(server):
    path = hub_file(REPO, FILE, revision=server.commit, progress=False)
    assert path == repo_dir() / "snapshots" / server.commit / FILE
    assert not (repo_dir() / "refs").exists()
    server.requests.clear()
    assert hub_file(REPO, FILE, revision=server.commit, progress=False) == path
    assert server.requests == []


def test_file_in_a_subfolder_links_back_to_blobs(server):
    server.add(REPO, "unet/diffusion_pytorch_model.safetensors", DATA)
    path = hub_file(REPO, "unet/diffusion_pytorch_model.safetensors", progress=False)
    assert os.readlink(path) == f"../../../blobs/{SHA256}"
    assert path.read_bytes() == DATA


def test_small_git_file_is_stored_under_its_git_etag(server):
    config = b'{"_class_name": "StableDiffusionPipeline"}'
    server.add(REPO, "model_index.json", config)
    server.mode = "git"  # served by the Hub itself, not redirected to LFS storage
    path = hub_file(REPO, "model_index.json", progress=False)
    assert os.readlink(path) == f"../../blobs/{git_sha1(config)}"
    assert path.read_bytes() == config


def test_empty_file_is_cached_too(server):
    server.add(REPO, "empty.txt", b"")
    assert hub_file(REPO, "empty.txt", progress=False).read_bytes() == b""


def test_blob_already_cached_for_another_revision_is_linked_without_download(server):
    hub_file(REPO, FILE, progress=False)
    server.requests.clear()
    server.commit = "fedcba9876543210fedcba9876543210fedcba98"  # a new commit, same file content

    path = hub_file(REPO, FILE, revision=server.commit, progress=False)
    assert path == repo_dir() / "snapshots" / server.commit / FILE
    assert path.read_bytes() == DATA
    assert [seen.method for seen in server.requests] == ["HEAD"]


def test_file_downloaded_by_huggingface_hub_is_reused_without_network(server):
    theirs = huggingface_hub.hf_hub_download(REPO, FILE, endpoint=server.url, cache_dir=hub_cache_dir())
    server.requests.clear()
    assert hub_file(REPO, FILE, progress=False) == Path(theirs)
    assert server.requests == []


def test_file_downloaded_here_is_found_by_huggingface_hub(server):
    ours = hub_file(REPO, FILE, progress=False)
    assert huggingface_hub.try_to_load_from_cache(REPO, FILE, cache_dir=hub_cache_dir()) == str(ours)
    by_commit = huggingface_hub.try_to_load_from_cache(
        REPO, FILE, cache_dir=hub_cache_dir(), revision=server.commit
    )
    assert by_commit == str(ours)


def test_dangling_snapshot_link_is_downloaded_again(server):
    path = hub_file(REPO, FILE, progress=False)
    (repo_dir() / "blobs" / SHA256).unlink()  # e.g. a cache cleaner removed the blob
    assert hub_file(REPO, FILE, progress=False) == path
    assert path.read_bytes() == DATA


def test_waits_while_another_process_holds_the_blob_lock(server):
    lock = hub_cache_dir() / ".locks" / "models--test-org--tiny-sd" / f"{SHA256}.lock"
    lock.parent.mkdir(parents=True)
    results = []
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as huggingface_hub's filelock does while it downloads
        worker = threading.Thread(target=lambda: results.append(hub_file(REPO, FILE, progress=False)))
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and not any(seen.method == "GET" for seen in server.requests)
    worker.join(timeout=10)
    assert results[0].read_bytes() == DATA


# -- resuming and checking -------------------------------------------------------------------------------


def test_partial_file_from_an_earlier_attempt_is_resumed_with_range(server):
    partial = repo_dir() / "blobs" / f"{SHA256}.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(DATA[:123_456])

    assert hub_file(REPO, FILE, progress=False).read_bytes() == DATA
    blob_requests = [seen for seen in server.requests if seen.path.startswith("/blobs/")]
    assert [seen.headers.get("Range") for seen in blob_requests] == ["bytes=123456-"]


def test_server_ignoring_range_restarts_the_download_and_the_progress_bar(server, capsys):
    partial = repo_dir() / "blobs" / f"{SHA256}.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(DATA[:100_000][::-1])  # bytes that must not survive
    server.ignore_range = True

    assert hub_file(REPO, FILE).read_bytes() == DATA
    last_render = capsys.readouterr().err.rstrip().split("\r")[-1]
    assert "100%" in last_render  # not 149%: the bar restarted with the body


def test_connection_that_drops_often_but_makes_progress_still_completes(server):
    server.cuts = [30_000] * (hub_module._ATTEMPTS + 1)  # more drops than fruitless attempts allowed
    assert hub_file(REPO, FILE, progress=False).read_bytes() == DATA


def test_connection_dropped_mid_body_is_resumed(server):
    server.cuts = [70_000]
    assert hub_file(REPO, FILE, progress=False).read_bytes() == DATA
    blob_requests = [seen for seen in server.requests if seen.path.startswith("/blobs/")]
    assert [seen.headers.get("Range") for seen in blob_requests] == [None, "bytes=70000-"]


def test_connection_that_keeps_failing_gives_up_and_keeps_the_partial_file(server, monkeypatch):
    monkeypatch.setattr(hub_module, "_RETRY_WAIT_S", 0.0)  # the tests need not wait between retries
    server.cuts = [70_000] + [0] * hub_module._ATTEMPTS

    message = download_error(REPO, FILE)
    assert "failed 5 times in a row" in message and "--weights PATH" in message
    assert (repo_dir() / "blobs" / f"{SHA256}.incomplete").read_bytes() == DATA[:70_000]

    server.requests.clear()
    assert hub_file(REPO, FILE, progress=False).read_bytes() == DATA
    assert server.requests[-1].headers.get("Range") == "bytes=70000-"


def test_corrupted_body_fails_the_hash_check_and_is_deleted(server):
    server.corrupt = True
    message = download_error(REPO, FILE)
    assert f"not the announced {SHA256}" in message and "deleted" in message
    assert list((repo_dir() / "blobs").iterdir()) == []
    assert not (repo_dir() / "snapshots").exists()


def test_too_little_disk_space_is_refused_before_downloading(server, monkeypatch):
    monkeypatch.setattr(hub_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    message = download_error(REPO, FILE)
    assert "GB free" in message and "HF_HUB_CACHE" in message
    assert [seen.method for seen in server.requests] == ["HEAD"]


# -- environment -----------------------------------------------------------------------------------------


def test_hf_endpoint_is_used_and_the_endpoint_argument_overrides_it(server, env):
    env.setenv("HF_ENDPOINT", closed_port_url())
    assert hub_file(REPO, FILE, endpoint=server.url + "/", progress=False).read_bytes() == DATA


def test_hf_token_goes_to_the_hub_but_not_to_the_cdn_it_redirects_to(env, cdn):
    hub = FakeHub(blob_server=cdn)
    try:
        hub.add(REPO, FILE, DATA)
        env.setenv("HF_TOKEN", "hf_secret")
        assert hub_file(REPO, FILE, endpoint=hub.url, progress=False).read_bytes() == DATA
        assert [seen.headers.get("Authorization") for seen in hub.requests] == ["Bearer hf_secret"]
        assert [seen.headers.get("Authorization") for seen in cdn.requests] == [None]
    finally:
        hub.close()


def test_token_saved_by_huggingface_cli_login_is_used(server, tmp_path):
    (tmp_path / "hf_home").mkdir()
    (tmp_path / "hf_home" / "token").write_text("hf_from_file\n")
    hub_file(REPO, FILE, progress=False)
    assert server.requests[0].headers.get("Authorization") == "Bearer hf_from_file"


def test_no_token_sends_no_authorization(server):
    hub_file(REPO, FILE, progress=False)
    assert all("Authorization" not in seen.headers for seen in server.requests)


def test_cache_dir_is_hf_hub_cache_then_hf_home_then_xdg_then_home(env, tmp_path):
    env.setenv("HOME", str(tmp_path / "home"))
    env.delenv("HF_HOME")
    assert hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    env.setenv("HF_HOME", "~/hf")
    assert hub_cache_dir() == tmp_path / "home" / "hf" / "hub"
    env.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == tmp_path / "cache"


def test_download_lands_in_hf_hub_cache_and_cache_dir_argument_wins(server, env, tmp_path):
    env.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_file(REPO, FILE, progress=False).is_relative_to(
        tmp_path / "cache" / "models--test-org--tiny-sd"
    )
    mine = hub_file(REPO, FILE, cache_dir=tmp_path / "mine", progress=False)
    assert mine.is_relative_to(tmp_path / "mine" / "models--test-org--tiny-sd")


@pytest.mark.parametrize("how", ["argument", "HF_HUB_OFFLINE"])
def test_offline_mode_returns_a_cached_file_without_network(server, env, how):
    path = hub_file(REPO, FILE, progress=False)
    server.requests.clear()
    env.setenv("HF_HUB_OFFLINE", "1" if how == "HF_HUB_OFFLINE" else "0")
    assert hub_file(REPO, FILE, offline=True if how == "argument" else None, progress=False) == path
    assert server.requests == []


@pytest.mark.parametrize("how", ["argument", "HF_HUB_OFFLINE"])
def test_offline_mode_refuses_a_missing_file_without_network(server, env, how):
    env.setenv("HF_HUB_OFFLINE", "yes" if how == "HF_HUB_OFFLINE" else "0")
    message = download_error(REPO, FILE, offline=True if how == "argument" else None)
    assert "not in the Hugging Face cache" in message and "--weights PATH" in message
    assert server.requests == []


def test_progress_bar_shows_bytes_and_rate_on_stderr(server, capsys):
    hub_file(REPO, FILE)
    err = capsys.readouterr().err
    assert FILE in err and "B/s" in err


# -- failures: one line saying what, from where, why, and what to do -------------------------------------


def test_unreachable_endpoint_gives_a_one_line_error(env):
    url = closed_port_url()
    message = download_error(REPO, FILE, endpoint=url)
    assert message.startswith(f"could not download {REPO}/{FILE} (revision main) from {url}: ")
    assert "refused" in message and "--weights PATH" in message


def test_missing_file_gives_404_error(server):
    message = download_error(REPO, "no-such-file.safetensors")
    assert f"from {server.url}: HTTP 404" in message and "Entry not found" in message
    assert "--weights PATH" in message


def test_missing_revision_gives_404_error(server):
    assert "HTTP 404" in download_error(REPO, FILE, revision="v9")


@pytest.mark.parametrize("status", [401, 403])
def test_unauthorised_error_mentions_hf_token(server, status):
    server.status = status
    message = download_error(REPO, FILE)
    assert f"HTTP {status}" in message and "HF_TOKEN" in message and "--weights PATH" in message


def test_endpoint_that_is_not_a_hub_is_named_as_such(server):
    server.mode = "static"  # the bytes, without X-Repo-Commit or ETag
    message = download_error(REPO, FILE)
    assert "X-Repo-Commit" in message and "check HF_ENDPOINT" in message


def test_etag_that_is_not_a_plain_name_is_refused(server, tmp_path):
    server.etag = "../../../escaped"  # would otherwise become blobs/../../../escaped
    assert "ETag" in download_error(REPO, FILE)
    assert not list(tmp_path.rglob("escaped*"))


def test_failed_download_keeps_what_was_already_cached(server):
    path = hub_file(REPO, FILE, progress=False)
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


# -- command-line specs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("org/name", ("org/name", None, "main")),
        ("org/name/", ("org/name", None, "main")),
        ("org/name/model.safetensors", ("org/name", "model.safetensors", "main")),
        ("org/name@v1.0", ("org/name", None, "v1.0")),
        ("org/name@abc123/unet/model.safetensors", ("org/name", "unet/model.safetensors", "abc123")),
        ("org/name@refs%2Fpr%2F3", ("org/name", None, "refs/pr/3")),
        (
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            ("stable-diffusion-v1-5/stable-diffusion-v1-5", None, "main"),
        ),
    ],
)
def test_parse_hub_spec(spec, parsed):
    assert parse_hub_spec(spec) == parsed


@pytest.mark.parametrize(
    "spec", ["name", "/abs/path", "org/na me", "org/name@", "-org/name", "org/a--b", "org/n/../x"]
)
def test_parse_hub_spec_refuses_what_is_not_a_hub_id(spec):
    with pytest.raises(WeightsError, match="org/name"):
        parse_hub_spec(spec)


@pytest.mark.parametrize(
    ("spec", "local"),
    [
        ("org/name", False),
        ("org/name/model.safetensors", False),
        ("org/name@main", False),
        ("./org/name", True),
        ("~/models/sd.safetensors", True),
        ("/models/sd", True),
        ("models/v1-5-pruned-emaonly.safetensors", True),  # a mistyped local file, not a repo
        ("C:\\models\\sd.safetensors", True),
    ],
)
def test_is_local_path(spec, local):
    assert is_local_path(spec) == local


def test_existing_path_wins_over_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert is_local_path("org/name")


# -- SDXL: a short name for its single file, and diffusers-folder repos fetched file by file -----------------


def test_sdxl_by_short_name_or_repo_id_is_sd_xl_base_single_file(server):
    sha256 = server.add(SDXL_REPO, SDXL_FILE, DATA)
    snapshot = (
        hub_cache_dir() / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots" / server.commit
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
    assert folder == hub_cache_dir() / "models--test-org--tiny-xl" / "snapshots" / server.commit
    assert asked(server) == [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer_2/vocab.json",
        "tokenizer_2/merges.txt",
        "scheduler/scheduler_config.json",
    ]
    assert all(f"/{XL_REPO}/resolve/{server.commit}/" in p for p in server.paths("HEAD")[1:])  # one commit
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        asked(server)
    )  # README.md and the pickle were never fetched; tokenizer_2's files share tokenizer's blobs
    assert weights.load(folder).kind == "sdxl"
    server.requests.clear()
    assert resolve_weights(XL_REPO) == folder and server.requests == []  # all cached, main's commit too


def test_offline_a_fetched_folder_repo_needs_no_network(server, xl_folder, env):
    publish(server, xl_folder)
    folder = resolve_weights(XL_REPO)
    server.requests.clear()
    env.setenv("HF_HUB_OFFLINE", "1")
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
    assert "vae/diffusion_pytorch_model.fp16.safetensors" in asked(server)  # asked for first
    assert weights.load(folder, dtype=torch.float16).unet.out[2].weight.dtype == torch.float16


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
    assert "not a complete diffusers folder" in message and "--weights PATH" in message


def test_a_repo_named_alone_that_is_no_diffusers_folder_asks_for_its_file(server):
    with pytest.raises(WeightsError) as caught:
        resolve_weights(REPO)
    assert str(caught.value) == (
        f"{REPO} (revision main) has no unet/config.json, so it is not a diffusers folder: name its "
        f"weights file, {REPO}/FILE.safetensors"
    )
