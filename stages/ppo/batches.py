"""Which prompts each update samples from: a seeded permutation per epoch, each process taking its own slice."""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError


class PromptBatches:
    """Deterministic per-update prompt batches. The position in the data is a function of the update number, so
    resuming needs only that number."""

    def __init__(self, num_rows: int, local_prompts: int, num_processes: int, process_index: int, seed: int) -> None:
        """``local_prompts``: prompts per process per update (its episodes / num_generations)."""
        self.global_batch = local_prompts * num_processes
        if num_rows < self.global_batch:
            raise PipelineError(
                f"the prompt dataset has {num_rows} rows, fewer than one update's {self.global_batch} prompts: "
                "use more prompts or a smaller per_device_train_batch_size / num_mini_batches"
            )
        self.num_rows, self.local_prompts, self.process_index, self.seed = num_rows, local_prompts, process_index, seed
        self.per_epoch = num_rows // self.global_batch

    def indices(self, update: int) -> list[int]:
        epoch, position = divmod(update, self.per_epoch)
        order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + epoch))
        start = position * self.global_batch + self.process_index * self.local_prompts
        return order[start : start + self.local_prompts].tolist()
