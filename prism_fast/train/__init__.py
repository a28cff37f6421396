"""Mid-training: trainer loop, AdamW + schedules, DCP checkpoints, metrics, config tree (see docs/training.md)."""
