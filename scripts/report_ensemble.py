"""Rule report_ensemble: candidates on the blend split (in-sample vs nested) and test, and the search."""

from detfold.core.logs import log_to
from detfold.report.stage import report_ensemble

log_to(snakemake.log[0])
report_ensemble(
    selection_json=snakemake.input.selection,
    test_metrics=snakemake.input.test[0] if snakemake.input.test else None,
    search_csv=snakemake.input.search,
    out_png=snakemake.output.plot,
    out_html=snakemake.output.table,
    out_search=snakemake.output.search,
)
