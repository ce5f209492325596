"""Training's epoch backups where every worker of a restarted cluster finds them, on whatever host it now runs.

Keras' BackupAndRestore saves the chief's state at each epoch's end into a directory, and when the cluster starts
again every worker restores from that directory. For an output on local disk it is `<output>/model/backup`, which
every worker reaches: the workers of one host (the launcher's), or hosts that mount the output. For an output on a
store no directory is shared, so each worker keeps its backups in a local directory of its own, the chief sends its
backup and the loss history to `<output>/model/backup/epoch-N/` after every epoch, committed by a record written
last (`backup.json`: the training run's fingerprint, the epoch, each file's sha256), and every worker of a
restarted cluster fetches the backup of the same training run into its own directory before it trains. A backup
of another training run (another config or other features: another fingerprint) is never restored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import tf_keras

from tfbridge.contracts import ArtifactLayout

RECORD = "backup.json"
HISTORY = "history.json"  # in an epoch's directory: the chief's loss history file as it was after that epoch
BACKUP = "backup"  # in an epoch's directory: the chief's backup directory's files
_WORKER_TEMP = "workertemp_"  # BackupAndRestore's directory for what a non-chief worker writes


class StoreBackups:
    """The backups of one training run (`fingerprint`: tfbridge.contracts.fingerprints.model_fingerprint) under
    `<output>/model/backup/` on the output's store."""

    def __init__(self, layout: ArtifactLayout, fingerprint: str):
        self.root = layout.model_dir / BACKUP
        self.record = self.root / RECORD
        self.fingerprint = fingerprint
        self._layout = layout

    def local_dir(self, worker: str) -> Path:
        """This worker's own backup directory on its host (`worker`: its name, e.g. "worker 1")."""
        return self._layout.training_dir / f"backup-{worker.replace(' ', '-')}"

    def last(self) -> dict | None:
        """The record of this training run's last backup, or None: no backup, or another run's."""
        if not self.record.exists():
            return None
        record = json.loads(self.record.read_text())
        return record if record.get("fingerprint") == self.fingerprint else None

    def restore(self, local_dir: Path, history: Path | None) -> int | None:
        """Before training, on every worker: `local_dir` holds this run's last backup, or nothing; the chief
        (`history` given) gets the loss history with it, and removes another run's backups from the store. Returns
        the epochs the backup had finished, or None."""
        shutil.rmtree(local_dir, ignore_errors=True)
        record = self.last()
        if record is None:
            if history is not None:
                history.unlink(missing_ok=True)
                self.remove()  # another training run's: the record first, so no worker restores it meanwhile
            return None
        epoch = self.root / record["directory"]
        files = record["files"]
        (epoch / BACKUP).download({k.removeprefix(f"{BACKUP}/"): v for k, v in files.items()
                                   if k.startswith(f"{BACKUP}/")}, local_dir)
        if history is not None and HISTORY in files:
            epoch.download({HISTORY: files[HISTORY]}, history.parent)
            (history.parent / HISTORY).replace(history)
        return int(record["epoch"])

    def send(self, local_dir: Path, history: Path, epoch: int) -> None:
        """After an epoch, on the chief: its backup and loss history to the store, then the record that names
        them, then the epochs before it are removed."""
        directory = f"epoch-{epoch}"
        sources = {f"{BACKUP}/{p.relative_to(local_dir).as_posix()}": p for p in sorted(local_dir.rglob("*"))
                   if p.is_file() and not p.relative_to(local_dir).parts[0].startswith(_WORKER_TEMP)}
        if history.exists():
            sources[HISTORY] = history
        files = {}
        for relative, path in sources.items():
            data = path.read_bytes()
            files[relative] = hashlib.sha256(data).hexdigest()
            (self.root / directory / relative).write_bytes(data)
        self.record.write_text(json.dumps({"fingerprint": self.fingerprint, "epoch": epoch, "directory": directory,
                                           "files": files}, indent=1))
        for child in self.root.children():
            if child.name.startswith("epoch-") and child.name != directory:
                child.remove()

    def remove(self) -> None:
        """Every backup of the output (the record first: a half-removed backup is never restored)."""
        if self.record.exists():
            self.record.remove()
        if self.root.exists():
            self.root.remove()


class SendBackup(tf_keras.callbacks.Callback):
    """The chief's callback that sends each epoch's backup to the store: it must come after BackupAndRestore and
    the callback that writes the loss history."""

    def __init__(self, backups: StoreBackups, local_dir: Path, history: Path):
        super().__init__()
        self._backups, self._local_dir, self._history = backups, local_dir, history

    def on_epoch_end(self, epoch, logs=None):
        self._backups.send(self._local_dir, self._history, epoch + 1)
