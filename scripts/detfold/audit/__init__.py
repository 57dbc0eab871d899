"""Stage audit (workflow/audit.smk): ground-truth checks, the policy, VOC/YOLO import."""
