"""Where finished tasks keep their results: checkpoints in the cache, evaluations beside them.

Every file is written atomically, so an interrupted run leaves each task's result whole or
absent, and the next run redoes only the absent ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from robustbench_fmnist.data import user_cache_dir
from robustbench_fmnist.evaluation.sweep import CellOutputs, CellResult
from robustbench_fmnist.files import atomic_path, safe_file_name
from robustbench_fmnist.orchestration.plan import EvaluateTask, TrainTask
from robustbench_fmnist.orchestration.tasks import Evaluation
from robustbench_fmnist.training.checkpoints import save_checkpoint_state
from robustbench_fmnist.training.weights import TrainedWeights

log = logging.getLogger(__name__)


class TaskStore:
    """Stored task results under a cache folder: `checkpoints/` (training) and `evaluations/`."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.root = (Path(cache_dir) if cache_dir else user_cache_dir()) / "evaluations"
        # evaluations read or written by this store: planning reads each one to see that it loads,
        # and the report needs it again
        self._evaluations: dict[str, Evaluation] = {}

    def evaluation_path(self, task: EvaluateTask) -> Path:
        return self.root / f"{safe_file_name(task.label)}-{task.key[:24]}.pt"

    def is_done(self, task: TrainTask | EvaluateTask) -> bool:
        """Whether the task's result is stored and loads: a truncated or foreign file is done again."""
        if isinstance(task, EvaluateTask):
            return self.load_evaluation(task) is not None
        if not task.path.is_file():
            return False
        try:
            return "state_dict" in torch.load(task.path, map_location="cpu", weights_only=True)
        except Exception:
            return False

    def save_training(self, task: TrainTask, trained: TrainedWeights) -> None:
        save_checkpoint_state(task.path, trained.state, trained.metadata)

    def save_evaluation(self, task: EvaluateTask, evaluation: Evaluation) -> None:
        payload: dict[str, Any] = {
            "key": task.key,
            "results": [r.to_row() for r in evaluation.results],
            "predictions": torch.stack([o.predictions for o in evaluation.outputs]),
            "confidence": torch.stack([o.confidence for o in evaluation.outputs]),
            "true_probability": torch.stack([o.true_probability for o in evaluation.outputs]),
            "seconds": evaluation.seconds,
            "compiled": evaluation.compiled,
        }
        with atomic_path(self.evaluation_path(task)) as tmp:
            torch.save(payload, tmp)
        self._evaluations[task.key] = evaluation

    def load_evaluation(self, task: EvaluateTask) -> Evaluation | None:
        """The stored evaluation of `task`; None if absent or unreadable (it is then done again)."""
        if task.key in self._evaluations:
            return self._evaluations[task.key]
        path = self.evaluation_path(task)
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload["key"] != task.key or len(payload["results"]) != len(task.cells):
                raise ValueError("it belongs to another task")
            results = [CellResult(**row) for row in payload["results"]]
            outputs = [
                CellOutputs(p, c, t)
                for p, c, t in zip(
                    payload["predictions"], payload["confidence"], payload["true_probability"], strict=True
                )
            ]
            evaluation = Evaluation(results, outputs, float(payload["seconds"]), bool(payload["compiled"]))
        except Exception as exc:
            log.warning("stored evaluation %s is unusable (%s); evaluating again", path, str(exc)[:200])
            return None
        self._evaluations[task.key] = evaluation
        return evaluation
