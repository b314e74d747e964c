python3 -m moe.cli train --preset small --data DATA --out s_d3_e15 --save-dtype float16 --set dropout=0.3 --epochs 15
