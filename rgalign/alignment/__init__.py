"""Stage 2 (Ranking-Guided Alignment), paper section 4.2. The flow of Stages 1-3 (and Stage 3, Closed-Loop
Calibration: LTP of the aligned reasoner, QE-Rec retrained) is ``rgalign/workflow.py``.

teachers.py   multi-LLM sample generation (context -> one query)
reward.py     the Stage-1 QE-Rec as a reward model: NDCG of the clicked intent per candidate query
best_of_n.py  best-of-N sampling V1-V4 -> winners Q^w and losers Q^l
rg_sft_*.py   RG-SFT (Eq. 8), rg_dpo_*.py RG-DPO (Eq. 9-10), rg_cl_*.py RG-CL (Eq. 11)
stage2.py     candidates (teachers -> reward) and their best-of-N selection
"""
