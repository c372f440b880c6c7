"""Evaluation protocols beyond AGW's SYSU-MM01 / RegDB: LLCM (`llcm`) and one's own cameras (`manifest`).

Both drop, for each query, the gallery images of the same identity and the same
camera (`same_camera.rank_group`); `kdem_tf.evaluation` dispatches to them by protocol name.
"""
