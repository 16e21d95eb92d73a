"""``inspect`` on a checkpoint folder reads headers only and agrees with the config-derived inventory."""

from __future__ import annotations

import json

from conftest import PRESETS
from synthetic import write_checkpoint, write_shard
from mv4deploy.model.safetensors_headers import read_header
from mv4deploy.model.source import resolve_model

V4 = json.loads((PRESETS / "tiny-deepseek-v4.json").read_text())


def test_synthetic_v4_checkpoint_agrees_with_config(tmp_path, cli):
    expected = resolve_model("tiny-deepseek-v4").inventory
    folder = write_checkpoint(expected, tmp_path / "tiny-v4", V4, shards=3)
    result = cli("inspect", folder, "--json")
    assert result.code == 0, result.stderr
    report = result.json()
    assert report["source_kind"] == "checkpoint" and report["mismatches"] == []
    assert report["tensors"] == len(expected.tensors)
    assert report["checkpoint_bytes"] == expected.checkpoint_bytes == sum(
        p.stat().st_size - 8 - json_len(p) for p in folder.glob("*.safetensors"))
    assert report["params"]["total"] == expected.params_total


def json_len(path):
    import struct
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_mismatches_are_reported_by_tensor_name(tmp_path, cli):
    inventory = resolve_model("tiny-deepseek-v4").inventory
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(V4))
    tensors = [(t.name, t.dtype, t.shape, t.nbytes) for t in inventory.tensors
               if t.name != "layers.1.attn.wkv.weight"]
    tensors = [(n, d, (s[0], s[1] + 1) if n == "layers.2.attn.wq_a.weight" else s,
                (s[0] * (s[1] + 1)) if n == "layers.2.attn.wq_a.weight" else b) for n, d, s, b in tensors]
    tensors.append(("layers.0.attn.surprise", "F32", (4,), 16))
    write_shard(folder / "model.safetensors", tensors)
    result = cli("inspect", folder, "--json")
    assert result.code == 1
    problems = {m["name"]: m["problem"] for m in result.json()["mismatches"]}
    assert problems["layers.1.attn.wkv.weight"] == "missing from checkpoint"
    assert problems["layers.2.attn.wq_a.weight"].startswith("shape [64, 129]")
    assert "not in config" in problems["layers.0.attn.surprise"]
    assert "disagree" in result.stderr


def test_headers_only_a_10_gib_shard_costs_eight_bytes_plus_its_header(tmp_path, monkeypatch):
    import io
    import pathlib
    path = tmp_path / "huge.safetensors"
    header = b'{"w":{"dtype":"BF16","shape":[5368709120],"data_offsets":[0,10737418240]}}'
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header)
        handle.truncate(8 + len(header) + 10 * 2**30)   # sparse: 10 GiB payload never written
    read_bytes = []
    real_open = pathlib.Path.open

    def counting_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        if isinstance(handle, io.BufferedReader):
            real_read = handle.read
            handle = _Counting(handle, real_read, read_bytes)
        return handle
    monkeypatch.setattr(pathlib.Path, "open", counting_open)
    shard = read_header(path)
    assert shard.tensors[0].nbytes == 10 * 2**30 and shard.payload_bytes == 10 * 2**30
    assert sum(read_bytes) == 8 + len(header)


class _Counting:
    """A file wrapper that records how many bytes each read returned."""

    def __init__(self, handle, read, log):
        self._handle, self._read, self._log = handle, read, log

    def read(self, n=-1):
        data = self._read(n)
        self._log.append(len(data))
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)
