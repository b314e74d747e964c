python3 -m moe.cli train --preset seed --data DATA --out d_e3_d3_v16k_lr2 --epochs 3 --lr 2e-4 --set dropout=0.3 --set vocab_size=16000 --weight-decay 0.1
