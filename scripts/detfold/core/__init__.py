"""The small core every stage uses: COCO files and predictions, safe file I/O, the config gate, logging."""
