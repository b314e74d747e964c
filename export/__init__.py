"""Checkpoint -> TorchScript pieces -> Triton model repository (see repository.py)."""
