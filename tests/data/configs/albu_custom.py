# The demo's RTMDet-tiny with Albumentations (mmdet's Albu transform) and a transform of the
# user's own module beside this file (custom_imports), in training and prediction.
_base_ = "../../../config/models/rtmdet_tiny_cpu.py"

custom_imports = dict(imports=["my_transforms"], allow_failed_imports=False)
img_scale = (320, 320)

albu_transforms = [
    dict(type="RandomBrightnessContrast", brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    dict(type="Blur", blur_limit=3, p=0.2),
]
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="Albu",
        transforms=albu_transforms,
        bbox_params=dict(
            type="BboxParams",
            format="pascal_voc",
            label_fields=["gt_bboxes_labels", "gt_ignore_flags"],
            min_visibility=0.0,
            filter_lost_elements=True,
        ),
        keymap={"img": "image", "gt_bboxes": "bboxes"},
        skip_img_without_anno=True,
    ),
    dict(type="GrayWorld"),
    dict(type="Resize", scale=img_scale, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="Pad", size=img_scale, pad_val=dict(img=(114, 114, 114))),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="GrayWorld"),
    dict(type="Resize", scale=img_scale, keep_ratio=True),
    dict(type="Pad", size=img_scale, pad_val=dict(img=(114, 114, 114))),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
