python3 -m moe.cli train --preset small --data DATA --out s_bal02_d2 --save-dtype float16 --set dropout=0.2 --set balance_loss_weight=0.02
