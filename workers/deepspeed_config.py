"""DeepSpeed configuration built from a job spec and its capacity plan."""

from __future__ import annotations

from typing import Any

from workers.engines import BETAS, GRADIENT_CLIPPING


def deepspeed_config(
    spec: Any,
    zero_stage: int,
    world_size: int,
    on_gpu: bool,
    activation_checkpointing: bool = False,
) -> dict[str, Any]:
    """The DeepSpeed config dict for ``spec`` at ``zero_stage`` over ``world_size`` ranks.

    bf16 on GPU; fp32 on CPU, where bf16 kernels are slow and the tiny presets gain nothing.
    The LR schedule is the engines' LambdaLR, passed to ``deepspeed.initialize`` separately.
    """
    zero: dict[str, Any] = {
        "stage": zero_stage,
        # Buckets sized for the planner's runtime reserve (~0.4 GB each in bf16).
        "reduce_bucket_size": 200_000_000,
        "allgather_bucket_size": 200_000_000,
        "overlap_comm": on_gpu,
        "contiguous_gradients": True,
    }
    if zero_stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": 50_000_000,
                "stage3_param_persistence_threshold": 100_000,
                "stage3_max_live_parameters": 1_000_000_000,
                # Export gathers full weights for save_pretrained on rank 0.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": spec.micro_batch,
        "gradient_accumulation_steps": spec.grad_accum,
        "train_batch_size": spec.micro_batch * spec.grad_accum * world_size,
        "gradient_clipping": GRADIENT_CLIPPING,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": spec.lr, "betas": list(BETAS), "weight_decay": spec.weight_decay},
        },
        "zero_optimization": zero,
        "bf16": {"enabled": on_gpu},
        "steps_per_print": 10**9,  # metrics go through the job's reporter instead
        "wall_clock_breakdown": False,
    }
    if activation_checkpointing:
        config["activation_checkpointing"] = {"partition_activations": zero_stage == 3}
    return config
