"""Where finished tasks keep their results: checkpoints in the cache, evaluation records beside them.

Every file is written atomically, so an interrupted run leaves each task's result whole or
absent, and the next run redoes only the absent ones. Nothing stored is believed unchecked: a
checkpoint's weights must match the SHA-256 recorded when it was written, and an evaluation
record must pass its own checksum, name this very task and have been made from the weights the
checkpoint now holds. A stored result that fails is not used: its task is done again, with one
line naming the file and why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from robustbench_fmnist.data import user_cache_dir
from robustbench_fmnist.errors import CheckpointError, ConfigError
from robustbench_fmnist.evaluation.adversary import AdversaryOutputs
from robustbench_fmnist.files import safe_file_name
from robustbench_fmnist.orchestration.plan import AdversaryTask, EvaluateTask, TrainTask, TransferTask
from robustbench_fmnist.orchestration.records import (
    ADVERSARY_TENSORS,
    SUFFIX,
    TRANSFER_TENSORS,
    RecordError,
    check_identity,
    check_identity_of,
    read_record,
    read_tensors,
    record_from_outputs,
    write_record,
    write_tensors,
)
from robustbench_fmnist.orchestration.tasks import Attack, Evaluation, Transfer
from robustbench_fmnist.training.checkpoints import read_checkpoint, save_checkpoint_state
from robustbench_fmnist.training.weights import TrainedWeights

log = logging.getLogger(__name__)


class TaskStore:
    """Stored task results under a cache folder: `checkpoints/` (training) and `evaluations/`."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.root = (Path(cache_dir) if cache_dir else user_cache_dir()) / "evaluations"
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(
                f"{self.root} is a file, where the cache keeps its evaluation records; move it away or "
                "choose another --cache-dir"
            )
        # evaluations read or written by this store: planning reads each one to check it, and the report needs it
        self._evaluations: dict[str, Evaluation] = {}
        self._weights: dict[str, str | None] = {}  # training key -> the checked SHA-256 of its checkpoint
        self._checksums: dict[str, str] = {}  # evaluation or adversary key -> its record's content SHA-256
        self._attacks: dict[str, Attack] = {}
        self._transfers: dict[str, Transfer] = {}

    def evaluation_path(self, task: EvaluateTask) -> Path:
        return self.root / f"{safe_file_name(task.label)}-{task.key[:24]}{SUFFIX}"

    def is_done(self, task: TrainTask | EvaluateTask) -> bool:
        """Whether the task's result is stored and checks out: anything else is done again."""
        if isinstance(task, EvaluateTask):
            return self.load_evaluation(task) is not None
        if isinstance(task, AdversaryTask):
            return self.load_adversary(task) is not None
        if isinstance(task, TransferTask):
            return self.load_transfer(task) is not None
        return self.checkpoint_sha256(task) is not None

    def checkpoint_sha256(self, task: TrainTask) -> str | None:
        """The SHA-256 of the task's checkpoint, checked against the one written with it; None if absent or not."""
        if task.key not in self._weights:
            sha = None
            if task.path.is_file():
                try:
                    sha = read_checkpoint(task.path)[1]["weights_sha256"]
                except CheckpointError as exc:
                    log.warning("cached checkpoint %s is not used (%s); training again", task.path, exc)
            self._weights[task.key] = sha
        return self._weights[task.key]

    def save_training(self, task: TrainTask, trained: TrainedWeights) -> None:
        self._weights[task.key] = save_checkpoint_state(task.path, trained.state, trained.metadata)

    def save_evaluation(self, task: EvaluateTask, evaluation: Evaluation) -> None:
        identity = {**self.expected_identity(task), **_observed(evaluation)}
        identity["weights_sha256"] = evaluation.weights_sha256
        record = record_from_outputs(identity, evaluation.outputs, evaluation.cell_seconds)
        self._checksums[task.key] = write_record(self.evaluation_path(task), record)
        self._evaluations[task.key] = evaluation

    def record_checksums(self, tasks: list[EvaluateTask | AdversaryTask]) -> dict[str, str]:
        """The record file name and content SHA-256 of each of `tasks` this store has read or written."""
        return {self._path(t).name: self._checksums[t.key] for t in tasks if t.key in self._checksums}

    def _path(self, task: EvaluateTask | AdversaryTask | TransferTask) -> Path:
        if isinstance(task, TransferTask):
            return self.transfer_path(task)
        return self.adversary_path(task) if isinstance(task, AdversaryTask) else self.evaluation_path(task)

    def expected_identity(self, task: EvaluateTask | AdversaryTask | TransferTask) -> dict[str, Any]:
        """What the task's record must name: the task, its cells, data, code, and the weights it is tied to."""
        identity = {"task_key": task.key, **task.identity, "model_label": task.label}  # another task's: said first
        if task.train is not None:
            identity["checkpoint"] = task.train.path.name
            identity["weights_sha256"] = self.checkpoint_sha256(task.train)
        return identity

    def adversary_path(self, task: AdversaryTask) -> Path:
        return self.root / f"{safe_file_name(task.label)}-{safe_file_name(task.adversary)}-{task.key[:24]}{SUFFIX}"

    def save_adversary(self, task: AdversaryTask, attack: Attack) -> None:
        identity = {**self.expected_identity(task), "seconds": attack.seconds}
        identity["weights_sha256"] = attack.weights_sha256
        identity["forward_passes"] = attack.outputs.forward_passes
        self._checksums[task.key] = write_tensors(self.adversary_path(task), identity, attack.outputs.tensors())
        self._attacks[task.key] = attack

    def load_adversary(self, task: AdversaryTask) -> Attack | None:
        """The stored result of an adversary task; None if absent or not usable (it is then done again)."""
        if task.key in self._attacks:
            return self._attacks[task.key]
        path = self.adversary_path(task)
        if not path.is_file():
            return None
        try:
            if task.train is not None and self.checkpoint_sha256(task.train) is None:
                raise RecordError("the checkpoint of the weights it was made from is missing or unusable")
            identity, tensors, sha = read_tensors(path, ADVERSARY_TENSORS)
            check_identity_of(identity, self.expected_identity(task))
            count = task.identity["test_images"]
            if any(len(tensors[n]) != count for n in ("clean_prediction", "random_point", "fooling_point")):
                raise RecordError(f"it holds outputs for other than this task's {count} images")
        except RecordError as exc:
            log.warning("stored adversary result %s is not used (%s); searching again", path, exc)
            return None
        self._checksums[task.key] = sha
        outputs = AdversaryOutputs(**tensors, forward_passes=int(identity.get("forward_passes", 0)))
        attack = Attack(outputs, float(identity["seconds"]), str(identity["weights_sha256"]))
        self._attacks[task.key] = attack
        return attack

    def transfer_path(self, task: TransferTask) -> Path:
        name = f"{safe_file_name(task.model)}-at-{safe_file_name(task.source.model)}-{safe_file_name(task.adversary)}"
        return self.root / f"{name}-{task.key[:24]}{SUFFIX}"

    def save_transfer(self, task: TransferTask, transfer: Transfer) -> None:
        self.load_adversary(task.source)  # its record's checksum, which the transfer names
        identity = {**self.expected_identity(task), "seconds": transfer.seconds}
        identity["source_record"] = self._checksums.get(task.source.key)
        identity["weights_sha256"] = transfer.weights_sha256
        self._checksums[task.key] = write_tensors(self.transfer_path(task), identity, transfer.tensors())
        self._transfers[task.key] = transfer

    def load_transfer(self, task: TransferTask) -> Transfer | None:
        """The stored result of a transfer task; None if absent or not usable (it is then done again).

        Tied to its source search's record too: a source searched again makes the transfer stale."""
        if task.key in self._transfers:
            return self._transfers[task.key]
        path = self.transfer_path(task)
        if not path.is_file():
            return None
        try:
            if self.load_adversary(task.source) is None:
                raise RecordError("the search whose worst points it used is not stored")
            identity, tensors, sha = read_tensors(path, TRANSFER_TENSORS)
            check_identity_of(
                identity, {**self.expected_identity(task), "source_record": self._checksums[task.source.key]}
            )
            if len(tensors["points"]) != task.identity["test_images"]:
                raise RecordError("it holds outputs for other than this task's images")
        except RecordError as exc:
            log.warning("stored transfer %s is not used (%s); evaluating again", path, exc)
            return None
        self._checksums[task.key] = sha
        transfer = Transfer(
            **tensors, seconds=float(identity["seconds"]), weights_sha256=str(identity["weights_sha256"])
        )
        self._transfers[task.key] = transfer
        return transfer

    def load_evaluation(self, task: EvaluateTask) -> Evaluation | None:
        """The stored evaluation of `task`; None if absent or not usable (it is then done again)."""
        if task.key in self._evaluations:
            return self._evaluations[task.key]
        path = self.evaluation_path(task)
        if not path.is_file():
            return None
        try:
            evaluation = self._checked(task, path)
        except RecordError as exc:
            log.warning("stored evaluation %s is not used (%s); evaluating again", path, exc)
            return None
        self._evaluations[task.key] = evaluation
        return evaluation

    def _checked(self, task: EvaluateTask, path: Path) -> Evaluation:
        if task.train is not None and self.checkpoint_sha256(task.train) is None:
            raise RecordError("the checkpoint of the weights it was made from is missing or unusable")
        record = read_record(path)
        check_identity(record, self.expected_identity(task))
        shape = (len(task.cells), task.identity["test_images"])
        if tuple(record.predictions.shape) != shape:
            raise RecordError(f"it holds {tuple(record.predictions.shape)} outputs, this task {shape}")
        identity = record.identity
        self._checksums[task.key] = record.sha256
        return Evaluation(
            record.outputs,
            record.cell_seconds.tolist(),
            float(identity["seconds"]),
            bool(identity["compiled"]),
            str(identity["weights_sha256"]),
        )


def _observed(evaluation: Evaluation) -> dict[str, Any]:
    """What the record notes of how the evaluation ran (observations, not part of what the task is)."""
    return {"seconds": evaluation.seconds, "compiled": evaluation.compiled}
