"""Evaluation metrics (numpy in, float out): `roi` (ROI-SSIM/PSNR), `segmentation` (Dice, NSD,
HD95), `calibration` (ECE, Brier, reliability curve), `fusion` (EN SD SF MI SCD VIF Qabf SSIM).
Import the submodule you need; definitions and cross-check tolerances are in docs/METRICS.md."""
