"""Stage ensemble (workflow/ensemble.smk): ``fusion`` (kernels in ``_fusion_kernels``) fuses
boxes; ``plan``: what is delivered, the parameter grids; ``search``: every combination fused and
matched once; ``selection``: the choice on the blend split; ``external``: other tools'
predictions in, the submission CSV out; ``delivery``: the plan on the test set; ``stage``: what
the rule scripts call."""
