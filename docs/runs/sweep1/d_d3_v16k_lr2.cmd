python3 -m moe.cli train --preset seed --data DATA --out d_d3_v16k_lr2 --set dropout=0.3 --set vocab_size=16000 --lr 2e-4 --weight-decay 0.1
