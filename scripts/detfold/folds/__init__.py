"""Stage folds (workflow/folds.smk): class-stratified, grouped K folds and the blend split."""
