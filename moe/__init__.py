"""The model library: configuration, the MoE Transformer, routing math, data, tokenizer, training,
evaluation and checkpoints. It imports nothing of export or serving."""
