from .npz import (
    class_folder_names, export_image_folder, load_npz, padded_crop_args, sha256_file, stratified_holdout, to_pil_array,
)
from .mnist_variants import (
    AFFNIST_LIKE_RANGES, MNIST_VARIANTS, ArrayDataset, ExpandedMnist, MultiMnist, affnist_like, expanded_mnist,
    load_affnist_mat,
    make_variant, multi_mnist, place_digits,
)
