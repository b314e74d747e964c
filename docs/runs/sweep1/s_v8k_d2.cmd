python3 -m moe.cli train --preset small --data DATA --out s_v8k_d2 --save-dtype float16 --set vocab_size=8000 --set dropout=0.2
