python3 -m moe.cli train --preset small --data DATA --out s_v20k_d2 --save-dtype float16 --set vocab_size=20000 --set dropout=0.2
