python3 -m moe.cli train --preset seed --data DATA --out d_d2_v8k --set dropout=0.2 --set vocab_size=8000
