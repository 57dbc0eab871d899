"""Stage evaluate (workflow/evaluate.smk): COCO bbox metrics equal to pycocotools, per fold and pooled."""
