python3 -m moe.cli train --preset seed --data DATA --out d_e3_d2_v16k --epochs 3 --set dropout=0.2 --set vocab_size=16000
