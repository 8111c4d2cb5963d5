"""workers: the job payloads that run on the GPUs.

Owns the A.X K1 model presets, the torch / DeepSpeed / transformers loops for fine-tune, LoRA,
distillation, inference and continued pretraining, and the capacity planner.

Invariants: never imports ``controlplane.db``; talks to the control plane only over its API or
the job's report channel. Never downloads weights from a hub: real weights come from a local
path.
"""
