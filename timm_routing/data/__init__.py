from .npz import class_folder_names, export_image_folder, load_npz, sha256_file, stratified_holdout
