"""The recipes' two extra stages for users of transformers' `Trainer`: distillation and attention transfer.

`train` runs a recipe on its own loop. A user whose training already runs on ``transformers.Trainer``
(its arguments, callbacks, logging, Hub integration) keeps it and swaps in `RecoveryTrainer`:

    from peft import LoraConfig, get_peft_model
    from hf_efficient_attn import patch_model
    from hf_efficient_attn.train.trainer import RecoveryTrainer

    teacher = AutoModelForCausalLM.from_pretrained(name)              # the unpatched model
    model = patch_model(AutoModelForCausalLM.from_pretrained(name), "linear")
    model = get_peft_model(model, LoraConfig(target_modules=["q_proj", "v_proj"],
                                             modules_to_save=["efficient_attn"]))
    trainer = RecoveryTrainer(model=model, args=TrainingArguments(...), train_dataset=data,
                              teacher=teacher, distill_weight=0.5, transfer_steps=100)
    trainer.train()

With ``distill_weight`` w the loss is ``(1 - w)·task loss + w·KL(teacher || model)`` over the labelled
positions (`distill.distilled_loss`, the same as `train`'s), the teacher running under the Trainer's
autocast. With ``transfer_steps`` n, the first `train` call first trains only the variant's own
parameters for n steps to reproduce each layer's exact attention (`transfer.attention_transfer`, on
the Trainer's training batches and accelerator), then trains as configured. `prepare_model` builds the
recipes' PEFT model (LoRA on attention, norms, embeddings and the variant's parameters saved by PEFT).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import transformers
from torch import nn

from .config import TrainConfig
from .distill import check_teacher, distilled_loss
from .transfer import attention_transfer


class RecoveryTrainer(transformers.Trainer):
    """`transformers.Trainer` with the recipes' distillation and attention-transfer stages.

    Args:
        teacher: the unpatched model, for ``distill_weight > 0``; moved to the training device and
            frozen.
        distill_weight: weight of distillation in the loss, in [0, 1]; 0 keeps the Trainer's loss.
        transfer_steps: optimizer steps of attention transfer before the first training run; 0: none.
        transfer_learning_rate: its learning rate (AdamW, constant).
        *args, **kwargs: `transformers.Trainer`'s.

    ``transfer_losses`` holds the transfer's per-step matching loss once it ran.
    """

    def __init__(self, *args: Any, teacher: nn.Module | None = None, distill_weight: float = 0.0,
                 transfer_steps: int = 0, transfer_learning_rate: float = 1e-3, **kwargs: Any) -> None:
        self.settings = TrainConfig(recipe="transfer" if transfer_steps else "lora", distill_weight=distill_weight,
                                    transfer_steps=transfer_steps or 1, transfer_learning_rate=transfer_learning_rate,
                                    progress=False)
        check_teacher(teacher, distill_weight)
        super().__init__(*args, **kwargs)
        self.settings = dataclasses.replace(self.settings,
                                            gradient_accumulation_steps=self.accelerator.gradient_accumulation_steps)
        self.teacher = None if teacher is None else teacher.to(self.args.device).eval().requires_grad_(False)
        self.transfer_steps = transfer_steps
        self.transfer_losses: list[float] = []

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The Trainer's loss, mixed with distillation from the teacher when ``distill_weight > 0``."""
        if self.teacher is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        outputs = model(**inputs)
        loss = distilled_loss(outputs, inputs, self.teacher, self.settings.distill_weight,
                              self.autocast_smart_context_manager())
        return (loss, outputs) if return_outputs else loss

    def train(self, *args: Any, **kwargs: Any) -> transformers.trainer_utils.TrainOutput:
        """Attention transfer first (once, when ``transfer_steps`` asks for it), then `Trainer.train`."""
        if self.transfer_steps and not self.transfer_losses:
            self.transfer_losses = attention_transfer(self.model, self.get_train_dataloader(), self.settings,
                                                      self.accelerator)
        return super().train(*args, **kwargs)
