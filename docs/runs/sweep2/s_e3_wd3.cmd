python3 -m moe.cli train --preset small --data DATA --out s_e3_wd3 --save-dtype float16 --epochs 3 --weight-decay 0.3
