python3 -m moe.cli train --preset small --data DATA --out s_e3_ls2 --save-dtype float16 --epochs 3 --label-smoothing 0.2
