"""Stage 2 (Ranking-Guided Alignment) and Stage 3 (Closed-Loop Calibration), paper section 4.

teachers.py   multi-LLM sample generation (context -> one query)
reward.py     the Stage-1 QE-Rec as a reward model: NDCG of the clicked intent per candidate query
best_of_n.py  best-of-N sampling V1-V4 -> winners Q^w and losers Q^l
rg_sft_*.py   RG-SFT (Eq. 8), rg_dpo_*.py RG-DPO (Eq. 9-10), rg_cl_*.py RG-CL (Eq. 11)
calibrate.py  Stage 3: LTP from the aligned reasoner, QE-Rec retrained
"""
