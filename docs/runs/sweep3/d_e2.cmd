python3 -m moe.cli train --preset seed --data DATA --out d_e2 --epochs 2
