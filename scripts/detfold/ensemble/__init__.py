"""Stage ensemble (workflow/ensemble.smk): box fusion, the blend-split choice, the test-set delivery.

``fusion`` (kernels in ``_fusion_kernels``): WBF, NMS, soft-NMS, NMW; ``plan``: what is
delivered and the parameter grids; ``search``: every combination fused and matched once;
``selection``: the choice on the blend split and its honest estimates; ``external``: other
tools' predictions in, the submission CSV out; ``delivery``: the plan on the test set;
``stage``: what the rule scripts call.
"""
