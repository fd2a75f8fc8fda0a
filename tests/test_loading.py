"""Loading details a toy world cannot show: proxies, download progress, and the SAE's model kwargs."""

from __future__ import annotations

import http.server
import threading

import pytest

from mechinterp.core import loading


class _RecordingProxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy stand-in: answers every request with 200 and remembers its request line."""

    seen: list[str] = []

    def do_HEAD(self):  # noqa: N802 - the http.server naming
        self.seen.append(self.requestline)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def proxy():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _RecordingProxy.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}", _RecordingProxy.seen
    server.shutdown()


@pytest.fixture
def fresh_session():
    """huggingface_hub builds its HTTP client once; rebuild it so it reads this test's proxy settings."""
    from huggingface_hub.utils import close_session

    close_session()
    yield
    close_session()


def test_hub_probe_goes_through_the_proxy(proxy, fresh_session, monkeypatch):
    url, seen = proxy
    from huggingface_hub import constants as hub

    # A host that does not resolve: only a proxy can answer for it, as on a machine whose only way out
    # is a proxy.
    monkeypatch.setattr(hub, "ENDPOINT", "http://hub.invalid")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)  # the test session runs offline; the probe must not
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("http_proxy", url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert loading.hub_reachable()
    assert seen and seen[0].startswith("HEAD http://hub.invalid")


def test_hub_probe_without_proxy_says_unreachable(fresh_session, monkeypatch):
    from huggingface_hub import constants as hub

    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    assert not loading.hub_reachable()
    notes = []
    loading.go_offline_if_hub_unreachable(notes.append)
    assert hub.HF_HUB_OFFLINE is True and "unreachable" in notes[0]


def test_download_progress_bars_stay_on_while_loading():
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    enable_progress_bars()
    with loading.quiet_third_party():
        # transformers' disable_progress_bar() also switches the Hub's off; the download must still show.
        assert not are_progress_bars_disabled()
    assert not are_progress_bars_disabled()
    disable_progress_bars()  # a user who turned them off keeps them off afterwards
    with loading.quiet_third_party():
        assert not are_progress_bars_disabled()
    assert are_progress_bars_disabled()
    enable_progress_bars()


def test_a_local_model_in_a_folder_named_like_another_architecture_loads_as_itself(world, tmp_path):
    """TransformerLens picks its loader by substrings of the model's name; for a local folder that is its
    path, and a test folder such as /tmp/mechinterp-tests-mg8l3ot5 once loaded the toy GPT-2 as T5."""
    import shutil

    from mechinterp.core.loading import NAME_PATTERNS, load_hooked_model, neutral_path

    folder = tmp_path / "abc-t5-bert" / "model"
    shutil.copytree(world.model_dir, folder)
    assert neutral_path(folder) != folder and not any(p in str(neutral_path(folder)).lower() for p in NAME_PATTERNS)
    assert neutral_path(world.model_dir.parent / "model") in (world.model_dir.parent / "model", neutral_path(world.model_dir))
    model = load_hooked_model(str(folder), "cpu", {})
    assert model.cfg.original_architecture == "GPT2LMHeadModel" and model.cfg.d_model == 64
