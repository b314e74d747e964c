"""v1's orchestration as plain Python: no Triton here. model.py (the Triton adapter beside this
package) decodes requests, hands this library a `call(model, inputs, outputs)` that runs a
Triton model, and encodes the answers; tests/unit/test_bls.py drives the same code with the
eager pieces in place of the server."""
