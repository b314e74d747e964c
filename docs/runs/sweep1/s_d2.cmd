python3 -m moe.cli train --preset small --data DATA --out s_d2 --save-dtype float16 --set dropout=0.2
