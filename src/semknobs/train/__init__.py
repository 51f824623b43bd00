"""Training loops, the trainer base, tuning, DDP."""
