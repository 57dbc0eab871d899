"""Stage predict (workflow/predict.smk): fold models predict images (plain or with TTA)."""
