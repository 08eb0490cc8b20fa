"""The networks, inference only: ``compact`` (the tile head's CNN and the compact paper
network), ``vgg`` (the paper's VGG16 conv base, its preprocessing and ``Classifier``) and
``openvino`` (the bf16 runtime of a fused VGG16 classifier). Training lives in
``bh_stage.study``."""
