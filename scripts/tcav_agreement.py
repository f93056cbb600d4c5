r"""TCAV against Captum and scikit-learn on a trained CNN.

    make .venv-bench/.installed           # torch + Captum, the benchmark's venv
    .venv-bench/bin/python scripts/tcav_agreement.py --workdir=runs/cnn_fmnist

The run's CNN is copied into PyTorch (the benchmark's ``TorchCNN``). The examples
under test are the first ``--num_images`` test images of ``--target`` (Sneaker by
default); the concept is the first ``--concept_size`` test images of ``--concept``
(Sandal); ``--random_sets`` sets of as many random test images are drawn with a
fixed seed. At conv2 and conv3 it prints:

1. **The CAV**: fmi_jax's logistic CAV against scikit-learn's ``LogisticRegression``
   (``C = 1 / (l2 n)``, the same objective, another solver) on the same training
   rows: the cosine of the two directions and the relative difference of the weights.
2. **The scores with the same CAV**: Captum's ``TCAV`` given a classifier that returns
   fmi_jax's CAV, its activations taken by its own hooks (NCHW): the largest
   difference of ``sign_count``, and Captum's ``magnitude`` (the mean directional
   derivative along the unnormalised weights) against fmi_jax's mean sensitivity
   times the weights' norm.
3. **Captum's default classifier** (scikit-learn's ``SGDClassifier`` on a random split):
   the spread of its sign counts over ``--captum_repeats`` runs on the same data
   (seeded 0, 1, ...), and the cosine of its CAVs with fmi_jax's.

docs/captum.md reports what it measured. Without torch, Captum and scikit-learn, or
without a run in --workdir, it ends in one ``error:`` line and exit status 2.
"""

import random
import sys
import tempfile
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from experiments import _cli  # noqa: E402
from fmi_jax import attribution  # noqa: E402
from fmi_jax.attribution import concepts  # noqa: E402
from fmi_jax.train import evaluate as evaluate_lib  # noqa: E402
from fmi_jax.train import loop as loop_lib  # noqa: E402
from fmi_jax.train.input_pipeline import to_float  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/cnn_fmnist", "A trained run of a SimpleCNN.")
_TARGET = flags.DEFINE_integer("target", 7, "Class under test (7: Sneaker).")
_CONCEPT = flags.DEFINE_integer("concept", 5, "Class whose images are the concept (5: Sandal).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 100, "Test images of --target to score.")
_CONCEPT_SIZE = flags.DEFINE_integer("concept_size", 50, "Images per concept and random set.")
_RANDOM_SETS = flags.DEFINE_integer("random_sets", 5, "Random sets.")
_CAPTUM_REPEATS = flags.DEFINE_integer("captum_repeats", 5, "Runs of Captum's default CAV.")
_L2 = 0.01


def main():
    torch, captum_concept, classifiers, linear_model = _cli.reference_packages(
        "torch", "captum.concept", "captum.concept._utils.classifier", "sklearn.linear_model"
    )
    TCAV, Concept = captum_concept.TCAV, captum_concept.Concept
    Classifier, DefaultClassifier = classifiers.Classifier, classifiers.DefaultClassifier
    LogisticRegression = linear_model.LogisticRegression
    from fmi_jax.benchmark import torch_side

    model, variables, run_config, _ = evaluate_lib.restore_model(_WORKDIR.value)
    test = loop_lib.load_data(run_config.data)["test"]
    images = np.asarray(to_float(jnp.asarray(test.images)))
    labels = np.asarray(test.labels)
    size = _CONCEPT_SIZE.value
    x = images[labels == _TARGET.value][: _NUM_IMAGES.value]
    concept_images = images[labels == _CONCEPT.value][:size]
    rng = np.random.default_rng(0)
    random_sets = [
        images[rng.choice(len(images), size, replace=False)] for _ in range(_RANDOM_SETS.value)
    ]

    net = torch_side.from_flax(model, variables, tuple(images.shape[1:])).eval()
    handle = attribution.flax_model(model, variables, train=False)
    names = {id(m): n for n, m in net.named_modules()}

    def nchw(a):
        return torch.from_numpy(np.array(a, np.float32)).permute(0, 3, 1, 2).contiguous()

    def to_nchw_vector(weights):
        return torch.from_numpy(np.transpose(weights, (2, 0, 1)).reshape(-1).astype(np.float32))

    def concept(index, name, values):
        return Concept(index, name, [nchw(values)])

    class Fixed(Classifier):
        """Returns a CAV fitted by fmi_jax, in Captum's feature order."""

        def __init__(self, cavs):
            self.cavs, self.current = cavs, None

        def train_and_eval(self, dataloader, **kwargs):
            labels_seen = torch.cat([y for _, y in dataloader])
            self.current = tuple(int(v) for v in torch.unique(labels_seen, sorted=True))
            return {"accs": torch.tensor(self.cavs[self.current].accuracy)}

        def weights(self):
            w = to_nchw_vector(self.cavs[self.current].weights)
            return torch.stack([w, -w])  # concept first, then the random set

        def classes(self):
            return list(self.current)

    print(
        "| layer | CAV vs sklearn: cosine | relative weights | sign count: largest difference "
        "| magnitude vs mean sensitivity x norm: relative | Captum default: sign count range "
        "| Captum default: cosine with fmi_jax |"
    )
    print("|---|---|---|---|---|---|---|")
    target = _TARGET.value
    for layer in ("conv2", "conv3"):
        acts = {
            name: np.asarray(
                concepts.layer_activations(handle, values, layer=layer, batch_size=100)
            )
            for name, values in [("concept", concept_images)]
            + [(f"random{i}", r) for i, r in enumerate(random_sets)]
        }
        cavs, cosines, weight_diffs = {}, [], []
        for i in range(_RANDOM_SETS.value):
            random_acts = acts[f"random{i}"]
            cav = concepts.concept_activation_vector(acts["concept"], random_acts, l2=_L2)
            cavs[(0, i + 1)] = cav
            keep_c = ~concepts.held_out(size, 1 / 3)
            rows = np.concatenate([acts["concept"][keep_c], random_acts[keep_c]]).reshape(
                2 * keep_c.sum(), -1
            )
            y = np.r_[np.ones(keep_c.sum()), np.zeros(keep_c.sum())]
            reference = LogisticRegression(C=1 / (_L2 * len(y)), tol=1e-12, max_iter=100000)
            reference.fit(rows.astype(np.float64), y)
            theirs = reference.coef_[0]
            ours = cav.weights.reshape(-1).astype(np.float64)
            cosines.append(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
            weight_diffs.append(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))

        stack = np.stack([cavs[(0, i + 1)].weights for i in range(_RANDOM_SETS.value)])
        sensitivity = np.asarray(
            concepts.concept_sensitivity(handle, x, target, layer=layer, cav=stack, batch_size=100)
        )
        ours_sign = np.asarray(concepts.tcav_score(sensitivity)[0])
        norms = np.linalg.norm(stack.reshape(len(stack), -1), axis=1)
        ours_mean = sensitivity.mean(axis=0) * norms

        torch_layer = names[id(torch_side.conv_block_output(net, layer))]
        the_concept = concept(0, "concept", concept_images)
        sets = [[the_concept, concept(i + 1, f"random{i}", r)] for i, r in enumerate(random_sets)]
        with tempfile.TemporaryDirectory() as save_path:
            explainer = TCAV(net, [torch_layer], classifier=Fixed(cavs), save_path=save_path)
            scores = explainer.interpret(nchw(x), experimental_sets=sets, target=target)
        captum_sign = np.array(
            [float(scores[f"0-{i + 1}"][torch_layer]["sign_count"][0]) for i in range(len(sets))]
        )
        captum_mean = np.array(
            [float(scores[f"0-{i + 1}"][torch_layer]["magnitude"][0]) for i in range(len(sets))]
        )
        sign_difference = np.abs(captum_sign - ours_sign).max()
        magnitude_difference = np.abs(captum_mean - ours_mean).max() / np.abs(ours_mean).max()

        default_signs, default_cosines = [], []
        for repeat in range(_CAPTUM_REPEATS.value):
            # Captum splits with Python's random, scikit-learn's SGD shuffles with NumPy's
            # global generator: seeded per repeat, so the spread below is reproducible.
            torch.manual_seed(repeat)
            random.seed(repeat)
            np.random.seed(repeat)
            with tempfile.TemporaryDirectory() as save_path:
                explainer = TCAV(
                    net, [torch_layer], classifier=DefaultClassifier(), save_path=save_path
                )
                scores = explainer.interpret(nchw(x), experimental_sets=sets[:1], target=target)
                cav_weights = explainer.cavs["0-1"][torch_layer].stats["weights"][0].numpy()
            default_signs.append(float(scores["0-1"][torch_layer]["sign_count"][0]))
            ours_nchw = to_nchw_vector(cavs[(0, 1)].weights).numpy()
            default_cosines.append(
                cav_weights @ ours_nchw / np.linalg.norm(cav_weights) / np.linalg.norm(ours_nchw)
            )
        print(
            f"| {layer} | {min(cosines):.8f} | {max(weight_diffs):.2g} | {sign_difference:.2g} "
            f"| {magnitude_difference:.2g} | {min(default_signs):.2f}-{max(default_signs):.2f} "
            f"(fmi_jax {ours_sign[0]:.2f}) | {min(default_cosines):.2f}-{max(default_cosines):.2f} |"
        )


if __name__ == "__main__":
    _cli.run(main)
