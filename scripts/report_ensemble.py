"""Rule report_ensemble: single models vs ensembles (OOF and test) and the OOF search table."""

from detfold.logs import log_to
from detfold.report import report_ensemble

log_to(snakemake.log[0])
report_ensemble(
    oof_metrics=snakemake.input.oof,
    test_metrics=snakemake.input.test,
    search_csv=snakemake.input.search,
    out_png=snakemake.output.plot,
    out_html=snakemake.output.table,
    out_search=snakemake.output.search,
)
