"""A full disk (issue 24): checkpoints are written whole or not at all; the error is one line naming the folder,
the bytes needed and the last complete checkpoint, which resumes."""

from __future__ import annotations

import errno
import gc
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import TinyClassifier, ToyFamily, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_faults import command_line, omniglot_quick, overlay

from lightning_meta import Leap
from lightning_meta.atomic_files import DiskFull, write_atomically
from lightning_meta.checkpoint_files import load_checkpoint
from lightning_meta.data import TaskDataModule
from lightning_meta.trainer.checkpoint_io import AtomicCheckpointIO


class FillsUp:
    """``os.fdopen`` on a disk that takes ``files`` whole files, then fails the next one after ``room`` bytes with
    ENOSPC (a fault injected where the checkpoint's bytes are written)."""

    def __init__(self, files: int, room: int = 1000) -> None:
        self.files, self.room, self.opened = files, room, 0
        self.fdopen = os.fdopen

    def __call__(self, fd: int, *args, **kwargs):
        file = self.fdopen(fd, *args, **kwargs)
        self.opened += 1
        if self.opened <= self.files:
            return file
        write, room = file.write, [self.room]

        def limited(data) -> int:
            if len(data) > room[0]:
                write(bytes(data[: room[0]]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            room[0] -= len(data)
            return write(data)

        file.write = limited
        return file


def fit_with_checkpoints(folder: Path, max_steps: int = 12, ckpt_path=None):
    torch.manual_seed(0)
    data = TaskDataModule(ToyFamily(num_tasks=8, held_out=2), inner_steps=2, meta_batch_size=2, batch_size=8)
    saves = ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=-1)
    trainer = make_trainer([Leap(), saves], max_steps=max_steps, enable_checkpointing=True)
    trainer.fit(TinyClassifier(), datamodule=data, ckpt_path=ckpt_path)
    return trainer


def test_a_full_disk_leaves_whole_checkpoints_only_and_names_the_last_one(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fdopen", FillsUp(files=2))  # the checkpoints of steps 2 and 4 fit, the third does not
    with pytest.raises(DiskFull) as full:
        fit_with_checkpoints(tmp_path)
    monkeypatch.undo()
    message = str(full.value)
    last = tmp_path / "epoch=0-step=4.ckpt"
    assert "\n" not in message and message.startswith("checkpoint not written: no space left for epoch=")
    assert f" in {tmp_path}: it needs " in message
    assert message.endswith(f"then resume from {last}, the last complete one")
    needed = int(message.split("it needs ")[1].split(" bytes")[0].replace(",", ""))
    assert abs(needed - last.stat().st_size) < 0.2 * needed  # about the size of the one before it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]  # no .tmp
    assert load_checkpoint(last)["global_step"] == 4
    trainer = fit_with_checkpoints(tmp_path, ckpt_path=last)  # space again: the named checkpoint resumes
    assert trainer.global_step == 12


def test_a_write_that_fails_otherwise_keeps_its_error_and_leaves_nothing(tmp_path):
    def broken(file):
        file.write(b"half")
        raise RuntimeError("the serialiser failed")

    with pytest.raises(RuntimeError, match="the serialiser failed"):
        write_atomically(tmp_path / "x.ckpt", broken)
    assert list(tmp_path.iterdir()) == []
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {}, "global_step": 1}, tmp_path / "a.ckpt")
    (tmp_path / "plain").write_bytes(b"")
    assert (tmp_path / "a.ckpt").stat().st_mode == (tmp_path / "plain").stat().st_mode  # the umask's, as open()'s
    io.remove_checkpoint(tmp_path / "a.ckpt")
    assert io.latest() is None and io.written == []


@pytest.fixture
def small_disk(tmp_path):
    """A 320 kB tmpfs, where root may mount one (skipped elsewhere)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    gc.collect()  # checkpoints loaded memory-mapped keep their files open
    if subprocess.run(["umount", str(folder)]).returncode:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # detached now, freed when the last file closes


def test_a_real_full_disk_from_the_command_line_is_one_line_and_every_checkpoint_loads(
    small_disk, glyph_root, monkeypatch, capsys
):
    """The issue's trial: checkpoints every 2 steps into a small file system until it is full."""
    monkeypatch.chdir(small_disk)
    every_2 = overlay(small_disk.parent, "    - class_path: lightning_meta.Leap\n"
                      "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                      "      init_args: {every_n_train_steps: 2, save_top_k: -1}\n")  # fmt: skip
    args = omniglot_quick(
        "--config", every_2, f"--data.family.init_args.root={glyph_root}", "--data.family.init_args.num_train=4",
        "--data.inner_steps=2", "--data.meta_batch_size=2", "--model.init_args.channels=8", "--trainer.max_steps=400",
        f"--trainer.default_root_dir={small_disk}", f"--trainer.logger.init_args.save_dir={small_disk}",
    )  # fmt: skip
    status, err = command_line(capsys, args)
    folder = small_disk / "lightning_logs" / "version_0" / "checkpoints"
    saved = sorted(folder.glob("*.ckpt"), key=lambda path: load_checkpoint(path)["global_step"])  # all load
    assert status == 1 and "Traceback" not in err and len(saved) >= 2
    assert not [p for p in folder.iterdir() if p.suffix != ".ckpt"]  # no partial temporary file left
    line = err.strip().splitlines()[-1]
    assert line.startswith("lightning-meta: checkpoint not written: no space left for epoch=")
    assert f" in {folder}: it needs " in line and line.endswith(f"then resume from {saved[-1]}, the last complete one")
