"""Public-screen loaders: the contract converter, and downloads served from a local HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pertpyro.data import _download, _public
from pertpyro.data._download import default_cache_dir, fetch, read_sidecar, sidecar_path
from pertpyro.data._public import Source, adamson2016, adamson_label, norman2019, replogle2022, to_contract

# ----------------------------------------------------------------------------------------------------------------
# Only 127.0.0.1 may ever be contacted.


@pytest.fixture(autouse=True)
def _localhost_only(monkeypatch):
    real_urlopen = _download.urlopen

    def guarded(request, *args, **kwargs):
        host = urlsplit(request.full_url).hostname
        assert host == "127.0.0.1", f"test tried to contact {host}"
        return real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(_download, "urlopen", guarded)


class _State:
    """Files served by the test server, the requests it saw, and whether it honours Range."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.base = ""

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def gets(self, name: str) -> list[str | None]:
        return [rng for path, rng in self.requests if path == name]


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = urlsplit(self.path).path.lstrip("/")
            rng = self.headers.get("Range")
            state.requests.append((name, rng))
            body = state.files.get(name)
            if body is None:
                self.send_error(404)
                return
            match = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if match and not state.ignore_range:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = body[start:]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                payload = body
                self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format, *args):
            pass

    return Handler


@pytest.fixture
def server():
    state = _State()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def payload() -> bytes:
    return np.random.default_rng(0).bytes(300_000)


# ----------------------------------------------------------------------------------------------------------------
# Small screens in the real source formats.


def _counts(n_cells: int, n_genes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.5, size=(n_cells, n_genes)).astype(np.float32)


def _scperturb_norman() -> ad.AnnData:
    """scPerturb style: ``"control"``, combinations joined by ``"_"``, gene symbols as var_names, raw counts."""
    labels = ["control", "CBL", "CNN1_CBL", "control", "KLF1_MAP2K6", "CBL", "CNN1", "control"]
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(labels),
            "guide_id": [f"g{i}" for i in range(len(labels))],
            "nperts": [0, 1, 2, 0, 2, 1, 1, 0],
        },
        index=[f"cell{i}" for i in range(len(labels))],
    )
    var = pd.DataFrame({"ensembl_id": [f"ENSG{i:05d}" for i in range(6)]}, index=["CBL", "CNN1", "KLF1", "A", "B", "C"])
    return ad.AnnData(X=sp.csr_matrix(_counts(len(labels), 6)), obs=obs, var=var)


def _gears_style() -> ad.AnnData:
    """GEARS style: ``"ctrl"``, ``"A+ctrl"``, ``"A+B"``; Ensembl IDs as var_names, duplicated symbols."""
    labels = ["ctrl", "KLF1+ctrl", "ctrl+CBL", "KLF1+CBL", "CBL+KLF1", "ctrl"]
    obs = pd.DataFrame({"condition": labels, "cell_type": ["K562"] * 6}, index=[f"c{i}" for i in range(6)])
    var = pd.DataFrame(
        {"gene_name": ["CBL", "KLF1", "TBCE", "TBCE", np.nan, "TBCE-1"]},
        index=[f"ENSG{i:05d}" for i in range(6)],
    )
    return ad.AnnData(X=_counts(6, 6, seed=1).astype(np.int64), obs=obs, var=var)  # dense integers


def _replogle_style() -> ad.AnnData:
    labels = pd.Categorical(["non-targeting", "AAAS", "AARS", np.nan, "control", "AAAS"])
    obs = pd.DataFrame({"perturbation": labels, "batch": ["1"] * 6}, index=[f"c{i}" for i in range(6)])
    var = pd.DataFrame({"ensembl_id": list("abcdef")}, index=["AAAS", "AARS", "G3", "G4", "TBCE_ENSG1", "TBCE_ENSG2"])
    return ad.AnnData(X=sp.csr_matrix(_counts(6, 6, seed=2)), obs=obs, var=var)


def _adamson_style() -> ad.AnnData:
    labels = [
        "3x_neg_ctrl_pMJ144-1",
        "ATF6_PERK_IRE1_pMJ158",
        "PERK_only_pMJ146",
        "*",
        "62(mod)_pBA581",
        "ATF6_only_pMJ145",
        np.nan,
    ]
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame(
        {"ensembl_id": list("abcd")}, index=pd.Index(["ATF6", "EIF2AK3", "ERN1", "XBP1"], name="gene_symbol")
    )
    return ad.AnnData(X=sp.csr_matrix(_counts(len(labels), 4, seed=3)), obs=obs, var=var)


def _h5ad_bytes(adata: ad.AnnData, tmp_path: Path) -> bytes:
    path = tmp_path / "source.h5ad"
    adata.write_h5ad(path)
    return path.read_bytes()


# ----------------------------------------------------------------------------------------------------------------
# to_contract


def test_to_contract_scperturb_norman():
    raw = _scperturb_norman()
    x_before = raw.X.copy()
    out = to_contract(raw, perturbation_key="perturbation", control_labels="control", combination_separator="_")

    assert out.obs["perturbation"].tolist() == [
        "control",
        "CBL",
        "CBL+CNN1",
        "control",
        "KLF1+MAP2K6",
        "CBL",
        "CNN1",
        "control",
    ]
    assert isinstance(out.obs["perturbation"].dtype, pd.CategoricalDtype)
    assert list(out.obs["perturbation"].cat.categories) == ["control", "CBL", "CBL+CNN1", "CNN1", "KLF1+MAP2K6"]
    # the source labels and every other column are kept
    assert out.obs["perturbation_original"].astype(str).tolist() == raw.obs["perturbation"].astype(str).tolist()
    assert out.obs["guide_id"].tolist() == raw.obs["guide_id"].tolist()
    assert out.obs["nperts"].tolist() == raw.obs["nperts"].tolist()
    assert out.var["ensembl_id"].tolist() == raw.var["ensembl_id"].tolist()
    # counts: sparse CSR float32, same values
    assert sp.issparse(out.X)
    assert out.X.format == "csr"
    assert out.X.dtype == np.float32
    np.testing.assert_array_equal(out.X.toarray(), x_before.toarray())
    assert out.var_names.is_unique
    assert out.var_names.tolist() == raw.var_names.tolist()
    assert "original_var_name" not in out.var  # nothing renamed
    # the input is untouched, and not shared
    assert "perturbation_original" not in raw.obs
    assert list(raw.obs.columns) == ["perturbation", "guide_id", "nperts"]
    out.X.data[:] = -1
    np.testing.assert_array_equal(raw.X.toarray(), x_before.toarray())


def test_to_contract_gears_style():
    raw = _gears_style()
    out = to_contract(
        raw,
        perturbation_key="condition",
        control_labels="ctrl",
        combination_separator="+",
        gene_symbol_key="gene_name",
    )
    assert out.obs["perturbation"].tolist() == ["control", "KLF1", "CBL", "CBL+KLF1", "CBL+KLF1", "control"]
    assert out.obs["perturbation_original"].tolist() == raw.obs["condition"].tolist()
    assert "condition" not in out.obs
    assert out.obs["cell_type"].tolist() == ["K562"] * 6
    # symbols become unique var_names; a missing symbol falls back to the old name; old names kept
    assert out.var_names.tolist() == ["CBL", "KLF1", "TBCE", "TBCE-2", "ENSG00004", "TBCE-1"]
    assert out.var_names.is_unique
    assert out.var["original_var_name"].tolist() == raw.var_names.tolist()
    # dense integer input becomes CSR float32
    assert sp.issparse(out.X)
    assert out.X.format == "csr"
    assert out.X.dtype == np.float32
    np.testing.assert_array_equal(out.X.toarray(), np.asarray(raw.X, dtype=np.float32))


def test_to_contract_missing_labels_raise_or_drop(caplog):
    raw = _replogle_style()
    kwargs = {
        "perturbation_key": "perturbation",
        "control_labels": ("control", "non-targeting"),
        "combination_separator": None,
    }
    with pytest.raises(ValueError, match="1 cells have no usable perturbation label"):
        to_contract(raw, **kwargs)
    with caplog.at_level(logging.WARNING, logger="pertpyro.data._public"):
        out = to_contract(raw, **kwargs, on_missing="drop")
    assert "Dropping 1 cells" in caplog.text
    assert out.n_obs == 5
    assert out.obs["perturbation"].tolist() == ["control", "AAAS", "AARS", "control", "AAAS"]
    assert out.obs_names.tolist() == ["c0", "c1", "c2", "c4", "c5"]
    np.testing.assert_array_equal(out.X.toarray(), raw.X.toarray()[[0, 1, 2, 4, 5]])


def test_to_contract_uses_count_layer():
    raw = _scperturb_norman()
    counts = raw.X.copy()
    raw.layers["counts"] = counts
    raw.X = sp.csr_matrix(np.log1p(counts.toarray()))
    kwargs = {"perturbation_key": "perturbation", "control_labels": "control", "combination_separator": "_"}
    with pytest.raises(ValueError, match="non-integer values.*layer="):
        to_contract(raw, **kwargs)
    out = to_contract(raw, **kwargs, layer="counts")
    np.testing.assert_array_equal(out.X.toarray(), counts.toarray())
    assert "counts" not in out.layers


def _with_x(adata: ad.AnnData, x) -> ad.AnnData:
    adata.X = x
    return adata


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda: _with_x(_scperturb_norman(), np.full((8, 6), 0.5, dtype=np.float32)), {}, "non-integer"),
        (lambda: _with_x(_scperturb_norman(), -np.ones((8, 6), dtype=np.float32)), {}, "negative"),
        (lambda: _with_x(_scperturb_norman(), np.full((8, 6), np.nan, dtype=np.float32)), {}, "NaN or infinite"),
        (lambda: _scperturb_norman()[:0].copy(), {}, "empty"),
        (_scperturb_norman, {"perturbation_key": "guide"}, "no column 'guide'"),
        (_scperturb_norman, {"gene_symbol_key": "symbol"}, "var has no column 'symbol'"),
        (_scperturb_norman, {"control_labels": ()}, "control_labels"),
        (_scperturb_norman, {"control_labels": "ctrl"}, "not among control_labels"),
        (_scperturb_norman, {"on_missing": "ignore"}, "on_missing"),
    ],
)
def test_to_contract_rejects_bad_input(make, kwargs, message):
    options = {"perturbation_key": "perturbation", "control_labels": "control", "combination_separator": "_"}
    with pytest.raises(ValueError, match=message):
        to_contract(make(), **(options | kwargs))


def test_to_contract_rejects_plus_inside_target():
    raw = _scperturb_norman()
    raw.obs["perturbation"] = pd.Categorical(["control", "A+B"] * 4)
    with pytest.raises(ValueError, match="reserves for combinations"):
        to_contract(raw, perturbation_key="perturbation", control_labels="control", combination_separator="_")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3x_neg_ctrl_pMJ144-1", "control"),
        ("62(mod)_pBA581", "control"),
        ("Gal4-4(mod)_pBA582", "control"),
        ("ATF6_PERK_IRE1_pMJ158", "ATF6+EIF2AK3+ERN1"),
        ("PERK_only_pMJ146", "EIF2AK3"),
        ("SPI1_pDS255", "SPI1"),
        ("*", None),
    ],
)
def test_adamson_label(raw, expected):
    assert adamson_label(raw) == expected


def test_replogle2022_unknown_kind_lists_kinds():
    with pytest.raises(ValueError, match=r"k562_essential.*rpe1.*k562_gwps"):
        replogle2022("hela")


# ----------------------------------------------------------------------------------------------------------------
# fetch


def test_fetch_downloads_and_verifies(server, payload, tmp_path):
    server.files["data.bin"] = payload
    path = fetch(server.url("data.bin?download=1"), sha256=_sha(payload), cache_dir=tmp_path, progress=True)
    assert path == tmp_path / "data.bin"
    assert path.read_bytes() == payload
    assert read_sidecar(path) == _sha(payload)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin", "data.bin.sha256"]


def test_fetch_checksum_mismatch_leaves_no_file(server, payload, tmp_path):
    server.files["data.bin"] = payload
    wrong = "0" * 64
    with pytest.raises(ValueError, match=f"expected sha256 {wrong}, got {_sha(payload)}"):
        fetch(server.url("data.bin"), sha256=wrong, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_fetch_reuses_cached_file(server, payload, tmp_path):
    server.files["data.bin"] = payload
    first = fetch(server.url("data.bin"), sha256=_sha(payload), cache_dir=tmp_path, progress=False)
    second = fetch(server.url("data.bin"), sha256=_sha(payload), cache_dir=tmp_path, progress=False)
    assert first == second
    assert len(server.gets("data.bin")) == 1  # no second request


def test_fetch_replaces_corrupted_cached_file(server, payload, tmp_path):
    server.files["data.bin"] = payload
    (tmp_path / "data.bin").write_bytes(b"corrupted")
    path = fetch(server.url("data.bin"), sha256=_sha(payload), cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == payload
    assert len(server.gets("data.bin")) == 1


def test_fetch_resumes_partial_download(server, payload, tmp_path):
    server.files["data.bin"] = payload
    (tmp_path / "data.bin.part").write_bytes(payload[:100_000])
    path = fetch(server.url("data.bin"), sha256=_sha(payload), cache_dir=tmp_path, progress=False)
    assert server.gets("data.bin") == ["bytes=100000-"]
    assert path.read_bytes() == payload
    assert not (tmp_path / "data.bin.part").exists()


def test_fetch_restarts_when_server_ignores_range(server, payload, tmp_path):
    server.files["data.bin"] = payload
    server.ignore_range = True
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes from another version")
    path = fetch(server.url("data.bin"), sha256=_sha(payload), cache_dir=tmp_path, progress=False)
    assert server.gets("data.bin") == ["bytes=32-"]  # asked to resume, got the whole file instead
    assert path.read_bytes() == payload


def test_fetch_complete_part_file_is_not_downloaded_again(server, payload, tmp_path):
    server.files["data.bin"] = payload
    (tmp_path / "data.bin.part").write_bytes(payload)
    path = fetch(server.url("data.bin"), sha256=_sha(payload), cache_dir=tmp_path, progress=False)
    assert server.gets("data.bin") == [f"bytes={len(payload)}-"]  # answered 416: nothing left to send
    assert path.read_bytes() == payload


def test_fetch_corrupted_part_fails_checksum_and_is_deleted(server, payload, tmp_path):
    server.files["data.bin"] = payload
    (tmp_path / "data.bin.part").write_bytes(b"\0" * 1000)
    with pytest.raises(ValueError, match="Checksum mismatch"):
        fetch(server.url("data.bin"), sha256=_sha(payload), cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_fetch_unpinned_records_sidecar(server, payload, tmp_path, caplog):
    server.files["data.bin"] = payload
    with caplog.at_level(logging.WARNING, logger="pertpyro.data._download"):
        path = fetch(server.url("data.bin"), sha256=None, cache_dir=tmp_path, progress=False)
    assert "No sha256 is pinned" in caplog.text
    assert _sha(payload) in caplog.text
    assert sidecar_path(path).read_text().split() == [_sha(payload), "data.bin"]
    # reused while it matches its sidecar ...
    fetch(server.url("data.bin"), sha256=None, cache_dir=tmp_path, progress=False)
    assert len(server.gets("data.bin")) == 1
    # ... and downloaded again once it no longer does
    path.write_bytes(b"tampered")
    fetch(server.url("data.bin"), sha256=None, cache_dir=tmp_path, progress=False)
    assert len(server.gets("data.bin")) == 2
    assert path.read_bytes() == payload


def test_fetch_network_errors_are_clear(server, tmp_path):
    with pytest.raises(RuntimeError, match=r"HTTP error 404.*download the file manually and place it at"):
        fetch(server.url("missing.bin"), sha256=None, cache_dir=tmp_path, progress=False)
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.bin"
    with pytest.raises(RuntimeError, match=re.escape(url)) as info:
        fetch(url, sha256=None, cache_dir=tmp_path, progress=False, timeout=5)
    assert str(tmp_path / "data.bin") in str(info.value)
    assert not (tmp_path / "data.bin").exists()


def test_fetch_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="64 hexadecimal"):
        fetch("http://127.0.0.1/x.bin", sha256="abc", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="http"):
        fetch("file:///etc/hostname", sha256=None, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="plain file name"):
        fetch("http://127.0.0.1/x.bin", sha256=None, cache_dir=tmp_path, filename="../x.bin")


def test_default_cache_dir(monkeypatch, tmp_path, server, payload):
    monkeypatch.delenv("PERTPYRO_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pertpyro"
    monkeypatch.setenv("PERTPYRO_DATA_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    server.files["data.bin"] = payload
    path = fetch(server.url("data.bin"), sha256=_sha(payload), progress=False)
    assert path == tmp_path / "env" / "data.bin"


# ----------------------------------------------------------------------------------------------------------------
# Loaders end to end, with their source URLs pointed at the local server.


def _serve_source(monkeypatch, server, key: str, data: bytes) -> str:
    name = Path(urlsplit(_public.SOURCES[key].url).path).name
    server.files[name] = data
    monkeypatch.setitem(_public.SOURCES, key, _public.SOURCES[key]._replace(url=server.url(f"{name}?download=1")))
    return name


def test_norman2019_end_to_end(server, monkeypatch, tmp_path, caplog):
    data = _h5ad_bytes(_scperturb_norman(), tmp_path)
    name = _serve_source(monkeypatch, server, "norman2019", data)
    assert name == "NormanWeissman2019_filtered.h5ad"
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="pertpyro.data._download"):
        adata = norman2019(cache_dir=cache, progress=False)
    assert "No sha256 is pinned" in caplog.text
    assert adata.obs["perturbation"].tolist()[:5] == ["control", "CBL", "CBL+CNN1", "control", "KLF1+MAP2K6"]
    assert adata.obs["perturbation_original"].astype(str).tolist()[2] == "CNN1_CBL"
    assert adata.X.format == "csr"
    assert adata.X.dtype == np.float32
    prov = adata.uns["provenance"]
    assert prov["sha256"] == _sha(data)
    assert prov["sha256_pinned"] is False
    assert "Norman" in prov["citation"]
    assert prov["licence"]
    # pinning the recorded digest: the cached file is verified and reused, no new request
    again = norman2019(cache_dir=cache, progress=False, sha256=_sha(data))
    assert again.uns["provenance"]["sha256_pinned"] is True
    assert len(server.gets(name)) == 1
    with pytest.raises(ValueError, match="Checksum mismatch"):
        norman2019(cache_dir=tmp_path / "other", progress=False, sha256="1" * 64)


def test_replogle2022_end_to_end(server, monkeypatch, tmp_path):
    data = _h5ad_bytes(_replogle_style(), tmp_path)
    _serve_source(monkeypatch, server, "replogle2022_rpe1", data)
    adata = replogle2022("rpe1", cache_dir=tmp_path / "cache", progress=False)
    assert adata.obs["perturbation"].tolist() == ["control", "AAAS", "AARS", "control", "AAAS"]  # NaN cell dropped
    assert "TBCE_ENSG1" in adata.var_names  # an underscore in a gene name is not a combination
    assert adata.uns["provenance"]["dataset"] == "replogle2022_rpe1"


def test_adamson2016_end_to_end(server, monkeypatch, tmp_path):
    data = _h5ad_bytes(_adamson_style(), tmp_path)
    _serve_source(monkeypatch, server, "adamson2016", data)
    adata = adamson2016(cache_dir=tmp_path / "cache", progress=False)
    assert adata.obs["perturbation"].tolist() == ["control", "ATF6+EIF2AK3+ERN1", "EIF2AK3", "control", "ATF6"]
    assert list(adata.obs["perturbation"].cat.categories) == ["control", "ATF6", "ATF6+EIF2AK3+ERN1", "EIF2AK3"]
    assert adata.var_names.tolist() == ["ATF6", "EIF2AK3", "ERN1", "XBP1"]


def test_sources_table_is_complete():
    assert set(_public.SOURCES) == {
        "norman2019",
        "replogle2022_k562_essential",
        "replogle2022_rpe1",
        "replogle2022_k562_gwps",
        "adamson2016",
    }
    for source in _public.SOURCES.values():
        assert isinstance(source, Source)
        assert source.url.startswith("https://zenodo.org/records/10044268/files/")
        assert source.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", source.sha256)
        assert source.description
        assert source.citation
        assert source.licence
