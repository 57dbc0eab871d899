"""Stage report (workflow/report.smk): plots, HTML pages, the run summary."""
