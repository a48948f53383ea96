"""What a training run logs: progress bar, TensorBoard scalars, metrics.jsonl, summary.json."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .checkpoint import write_json_atomic


class RunLogger:
    """Rank 0 logs; on other ranks every method is a no-op.

    metrics.jsonl keeps one row per log step; a resumed run drops the rows after its checkpoint, so the file reads
    as one run's. TensorBoard likewise purges the steps after the resumed one.
    """

    def __init__(self, out: Path, steps: int, start_step: int, enabled: bool = True, desc: str = "pretrain",
                 tensorboard: bool = True, progress: bool = True):
        self.out, self.steps, self.enabled = Path(out), steps, enabled
        self.history: list[dict] = []
        self.t0 = time.time()
        self.tb = None
        if not enabled:
            return
        from tqdm.auto import tqdm

        self.metrics_path = self.out / "metrics.jsonl"
        if self.metrics_path.exists():
            lines = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
            self.history = [r for r in lines if r["step"] <= start_step]
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=steps, initial=start_step, desc=desc, dynamic_ncols=True, mininterval=2.0,
                        disable=not progress)
        self.skipped = 0.0

    def close(self) -> None:
        """Close the progress bar and TensorBoard (also of a run that stops early)."""
        if self.enabled:
            self.bar.close()
            if self.tb is not None:
                self.tb.close()

    def warn(self, message: str) -> None:
        if self.enabled:
            self.bar.write(f"warning: {message}")

    def scalars(self, tag: str, values: dict[str, float], step: int) -> None:
        """TensorBoard scalars `tag/name` outside the training rows (evaluations)."""
        if self.enabled and self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{tag}/{k}", v, step)

    def step(self, step: int, scalars: dict[str, float] | None) -> None:
        """Advance the bar; write `scalars`, which the loops pass at log steps (None at the others). Their
        skipped_samples are those since the last log step; the written ones are the run's total."""
        if not self.enabled:
            return
        self.bar.update(1)
        if scalars is None:
            return
        self.skipped += scalars.pop("skipped_samples", 0.0)
        scalars["skipped_samples"] = self.skipped
        self.scalars("train", scalars, step)
        record = {"step": step, "time_s": round(time.time() - self.t0, 2), **scalars}
        self.history.append(record)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = {k: v for k, v in scalars.items() if k.endswith("_loss") or k == "loss"}
        self.bar.set_postfix({**{k.replace("_loss", ""): f"{v:.3f}" for k, v in shown.items()},
                              "img/s": f"{scalars['images_per_s']:.0f}"}, refresh=False)

    def finish(self, steps_done: int, stopped: str | None = None, outputs: dict | None = None) -> dict:
        """Close the bar; the summary's common part, with `outputs` (what the run wrote) after the step count.

        `complete` says whether the run made all its steps; a run stopped early by the time-limit safety net says
        why in `stopped`, and its figures are not the config's result.
        """
        self.bar.close()
        summary: dict = {"complete": steps_done >= self.steps, "steps": steps_done, **(outputs or {}),
                         "timing": {"train_s": round(time.time() - self.t0, 1)}}
        if stopped:
            summary["stopped"] = stopped
        if self.history:
            summary["final_losses"] = {k: v for k, v in self.history[-1].items() if k.endswith("_loss") or k == "loss"}
        return summary

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(summary, self.out / "summary.json")
        if self.tb is not None:
            self.tb.close()
