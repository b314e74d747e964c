python3 -m moe.cli train --preset small --data DATA --out s_e3_bs32 --save-dtype float16 --epochs 3 --batch-size 32 --lr 3e-4
