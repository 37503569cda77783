"""The form in which cache entries travel to a node that does not see the driver's cache (`tuning.shipping`), without Ray:
the end-to-end case, through Ray's object store to a node in its own mount namespace, is in test_cluster.py."""

from __future__ import annotations

import os

from tuning.shipping import keep, pack, present


def test_an_entry_is_written_whole_at_its_path_once_and_a_file_as_itself(tmp_path):
    entry = tmp_path / "driver" / "features" / "0123abcd"
    (entry / "sub").mkdir(parents=True)
    (entry / "train.npy").write_bytes(b"\x01" * 1000)
    (entry / "sub" / "val.npy").write_bytes(b"\x02" * 10)
    (entry / "manifest.json").write_text("{}")
    files = pack(entry)
    assert sorted(files) == ["manifest.json", "sub/val.npy", "train.npy"]

    node = tmp_path / "node" / "features" / "0123abcd"
    assert not present(node, {name: len(data) for name, data in files.items()})
    keep(node, files)
    assert {name: (node / name).read_bytes() for name in files} == files
    assert not [path.name for path in node.parent.iterdir() if path.name.startswith(".partial-")]
    written = os.stat(node / "train.npy").st_mtime_ns
    keep(node, files)  # already there: not written again
    assert os.stat(node / "train.npy").st_mtime_ns == written

    (node / "train.npy").write_bytes(b"\x01" * 999)  # cut short: not the entry shipped
    assert not present(node, {name: len(data) for name, data in files.items()})

    weights = tmp_path / "driver" / "mine.weights.h5"
    weights.write_bytes(b"weights")
    keep(tmp_path / "node" / "mine.weights.h5", pack(weights))
    assert (tmp_path / "node" / "mine.weights.h5").read_bytes() == b"weights"
