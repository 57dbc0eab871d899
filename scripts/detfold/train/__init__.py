"""Stage train (workflow/train.smk): zoo configs adapted to a fold and trained with MMDetection."""
