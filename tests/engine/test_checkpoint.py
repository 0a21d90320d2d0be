"""``vislab.engine.checkpoint``: corrupt, truncated, non-torch and non-weights files, and folders, each answer
one UserError line naming the file, never suggesting an unsafe load."""

import pickle

import pytest
import torch

from vislab.engine.checkpoint import load_torch_file, read_checkpoint
from vislab.errors import UserError


class _NotWeights:  # a pickled object: what a weights-only load refuses
    pass


def test_bad_files_are_one_line_naming_the_file(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(2)}, "vislab": {"task": "classification"}}, good)
    data = good.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.ckpt").write_text("hello, not a checkpoint")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    torch.save({"obj": _NotWeights()}, tmp_path / "object.ckpt")
    (tmp_path / "folder.ckpt").mkdir()
    cases = [("truncated.ckpt", "is not a valid vislab/PyTorch weights file: it is truncated or corrupt"),
             ("text.ckpt", "is not a valid vislab/PyTorch weights file: it is not a file written by torch.save"),
             ("empty.ckpt", r"is empty \(0 bytes\)"),
             ("object.ckpt", "is not a valid vislab/PyTorch weights file: it holds pickled Python objects"),
             ("folder.ckpt", "is a folder, not a file"),
             ("missing.ckpt", "does not exist")]
    for name, match in cases:
        with pytest.raises(UserError, match=f"checkpoint {tmp_path / name} {match}") as err:
            read_checkpoint(tmp_path / name, "classification", what="a classification run")
        msg = str(err.value)
        assert "\n" not in msg and "weights_only" not in msg and "False" not in msg, msg
    ckpt, meta = read_checkpoint(good, "classification", what="a classification run")
    assert meta == {"task": "classification"}
    with pytest.raises(UserError, match="is not a checkpoint of the detection experiment"):
        read_checkpoint(good, "detection", what="the detection experiment")


def test_plain_pickle_and_the_word_for_the_file(tmp_path):
    with open(tmp_path / "p.pt", "wb") as f:
        pickle.dump({"a": _NotWeights()}, f)
    with pytest.raises(UserError, match=r"^vit_weights file .*p.pt is not a valid vislab/PyTorch weights file"):
        load_torch_file(tmp_path / "p.pt", what="vit_weights file")
    torch.save({"w": torch.zeros(3)}, tmp_path / "sd.pt")
    assert torch.equal(load_torch_file(tmp_path / "sd.pt")["w"], torch.zeros(3))
