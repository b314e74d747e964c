python3 -m moe.cli train --preset small --data DATA --out s_base --save-dtype float16
