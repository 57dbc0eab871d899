"""Stage ensemble (workflow/ensemble.smk): box fusion, the blend-split choice, the test-set delivery."""
