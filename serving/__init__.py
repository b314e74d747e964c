"""Serving: export a checkpoint to a Triton model repository, run tritonserver on it, the `moe` CLI."""
