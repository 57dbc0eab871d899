"""Rule run_facts: seed, versions, machine, run time per rule and job, and the config used."""

from detfold.core.logs import log_to
from detfold.report.stage import report_run_facts

log_to(snakemake.log[0])
report_run_facts(snakemake.input.benchmarks, snakemake.params.config, snakemake.output.facts)
