"""Stage analyze (workflow/analyze.smk): error breakdown, thresholds, confusion and label review."""
