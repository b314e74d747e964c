python3 -m moe.cli train --preset seed --data DATA --out d_e3 --epochs 3
