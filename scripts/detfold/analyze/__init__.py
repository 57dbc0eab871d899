"""Stage analyze (workflow/analyze.smk): error breakdown, thresholds, confusion and label review."""

#: the analysis of the models fused (several models only): no model may take this name
OOF_ENSEMBLE = "oof_ensemble"
