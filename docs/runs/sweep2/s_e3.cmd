python3 -m moe.cli train --preset small --data DATA --out s_e3 --save-dtype float16 --epochs 3
