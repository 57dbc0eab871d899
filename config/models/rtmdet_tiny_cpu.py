# RTMDet-tiny sized for CPU training from scratch on small images (the demo's model).
# Inherits mmdet's own config and states only what differs; detfold fills in the data
# (annotation files, classes, num_classes), epochs, batch size, lr, seed and work dir.
_base_ = "mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py"

img_scale = (320, 320)  # (w, h) network input; the demo images are 320x240
norm_cfg = dict(type="BN")  # plain BN: SyncBN needs a distributed run

model = dict(
    backbone=dict(norm_cfg=norm_cfg, init_cfg=None),  # no pretrained download: from scratch
    neck=dict(norm_cfg=norm_cfg),
    bbox_head=dict(norm_cfg=norm_cfg),
    test_cfg=dict(nms_pre=1000, score_thr=0.05, max_per_img=100),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="RandomResize", scale=img_scale, ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type="RandomCrop", crop_size=img_scale, allow_negative_crop=False),
    dict(type="YOLOXHSVRandomAug"),
    dict(type="RandomFlip", prob=0.5, direction=["horizontal", "vertical"]),
    dict(type="Pad", size=img_scale, pad_val=dict(img=(114, 114, 114))),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=img_scale, keep_ratio=True),
    dict(type="Pad", size=img_scale, pad_val=dict(img=(114, 114, 114))),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]

train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    pin_memory=False,
    dataset=dict(pipeline=train_pipeline),
)
val_dataloader = dict(batch_size=8, num_workers=1, pin_memory=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_epochs = 12
base_lr = 0.008
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs, dynamic_intervals=None)
optim_wrapper = dict(optimizer=dict(lr=base_lr))
auto_scale_lr = dict(enable=False, base_batch_size=8)  # base_lr is for batches of 8 (detfold scales it)
param_scheduler = [
    dict(type="LinearLR", start_factor=1.0e-3, by_epoch=False, begin=0, end=100),
    dict(
        type="CosineAnnealingLR",
        eta_min=base_lr * 0.05,
        begin=0,
        end=max_epochs,
        T_max=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
]
custom_hooks = []  # no EMA (too slow to warm up in a short schedule), no pipeline switch
default_hooks = dict(logger=dict(type="LoggerHook", interval=10))
