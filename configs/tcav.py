"""The TCAV study: which classes of a trained classifier depend on which concepts.

    python -m experiments.tcav --workdir=runs/cnn_fmnist --config=configs/tcav.py

Every class of the dataset is a concept (its images); every class is also tested
against every concept. Reads the run's checkpoint (best by validation accuracy) and
writes under `<workdir>/<output>/`. `:smoke` shrinks it to seconds.
"""

import ml_collections

from configs import common


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.checkpoint = "best"
    config.split = "test"
    config.output = "tcav"
    # Draws the concept images, the images under test and the random sets, all disjoint.
    config.seed = 0
    # Layers to test (module paths, e.g. 'conv2' for the block's output).
    config.layers = ("conv2", "conv3")
    config.concept_size = 50  # images of each class as its concept
    config.num_images = 50  # images of each class under test
    config.random_sets = 10  # the t-test compares 10 concept CAVs with 10 random ones
    config.random_size = 50  # images per random set
    # The CAV: 'logistic' (L2-regularised, penalty l2 / 2 |w|^2) or 'mean_difference'.
    config.classifier = "logistic"
    config.l2 = 0.01
    config.test_fraction = 1 / 3  # of each set, held out to measure the CAV's accuracy
    config.alpha = 0.05  # Bonferroni-corrected over the concepts tested on each class
    # Images per forward/backward pass: bounds memory.
    config.batch_size = 256

    arg = common.variant(arg)
    if arg == "smoke":
        config.layers = ("conv2",)
        config.concept_size = 4
        config.num_images = 3
        config.random_sets = 3
        config.random_size = 6
        config.batch_size = 64
    return config
