python3 -m moe.cli train --preset small --data DATA --out s_lr1e3_d2_wd1 --save-dtype float16 --lr 1e-3 --set dropout=0.2 --weight-decay 0.1
