python3 -m moe.cli train --preset small --data DATA --out s_e3_v20k --save-dtype float16 --epochs 3 --set vocab_size=20000
