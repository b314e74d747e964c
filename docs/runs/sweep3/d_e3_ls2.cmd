python3 -m moe.cli train --preset seed --data DATA --out d_e3_ls2 --epochs 3 --label-smoothing 0.2
