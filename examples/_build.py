"""Writes the five example notebooks (without outputs). Run: .venv/bin/python examples/_build.py

The notebooks are generated so that their shared first cell stays the same everywhere and so that
they are committed without outputs; edit this file, not the .ipynb files.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
# Setup. DIGITLAB_QUICK=1 (set before starting Jupyter, or here) shortens every training: fewer epochs,
# subsets of the training images, fewer trials. The notebook then runs in well under a minute, and its
# numbers are no longer comparable with the lesson's. Without it the cells use the lesson's settings.
import os

QUICK = os.environ.get("DIGITLAB_QUICK", "").lower() in ("1", "true", "yes")
RUNS_DIR = os.environ.get("DIGITLAB_RUNS_DIR", "runs")  # where the run folders go

%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

import digitlab
from digitlab.training import recipe_config, train


def show(path):
    """Show a PNG that digitlab wrote."""
    display(Image(filename=str(path)))


def compare(what, lesson, measured, trained=True):
    """The lesson's number next to the one digitlab measured just now (``trained``: it depends on training)."""
    note = "   [quick mode: shortened training]" if QUICK and trained else ""
    print(f"{what}\\n  lesson:   {lesson}\\n  digitlab: {measured}{note}")


print(f"digitlab {digitlab.__version__}; quick mode {'ON' if QUICK else 'off'}; run folders in {RUNS_DIR}/")'''


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def notebook(cells: list) -> nbformat.NotebookNode:
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    return nb


# --- 01: lesson 000 -------------------------------------------------------------------------------

NB01 = [
    md("""
# 01 · Baseline, softmax network and a one-hidden-layer MLP (lesson 000)

Lesson 000 (German, TensorFlow) trains a logistic-regression baseline on MNIST, rebuilds it as a
network without hidden layer (7,850 parameters), adds one hidden layer of 36 units (28,630 parameters),
looks at what the weights learned, and ends with a CNN. Here every step is a few lines of digitlab.

Each result is followed by a line with **the number the lesson reports** and **the number digitlab
measured** in this run. Set `DIGITLAB_QUICK=1` for a short run (CI does).
"""),
    code(SETUP),
    md("""
## The data set: MNIST, stratified 60,000 / 5,000 / 5,000

The lesson loads `mnist_784` from OpenML, divides by 255 and splits twice with
`train_test_split(..., test_size=5_000, stratify=y, random_state=42)`. digitlab's split scheme
`notebook-000` reproduces those two calls offline (the MNIST files ship with digitlab); the recipes
below scale with the `unit` scaler (x / 255).
"""),
    code('''
from digitlab.data import load_dataset, split

ds = load_dataset("mnist")
sp = split(ds, "notebook-000")
print(f"pixels: {ds.train_images.dtype} in [{ds.train_images.min()}, {ds.train_images.max()}] (scaled to [0, 1] in training)")
print(sp)
compare("validation / test images", "5,000 / 5,000", f"{len(sp.val_y):,} / {len(sp.test_y):,}", trained=False)
'''),
    code('''
grid = sp.train_x[:100].reshape(10, 10, 28, 28).transpose(0, 2, 1, 3).reshape(280, 280)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.3]})
ax1.imshow(grid, cmap="gray")
ax1.set_axis_off()
ax1.set_title("The first 100 training images")
counts = np.bincount(sp.train_y, minlength=10)
ax2.bar(ds.classes, counts)
ax2.set_xlabel("Digit")
ax2.set_ylabel("Training images")
ax2.set_title("Class distribution of the training set")
plt.show()
print(f"images per class: {counts.min():,} to {counts.max():,}: about equally many")
'''),
    md("""
## Baseline: logistic regression

scikit-learn's `LogisticRegression()` on all pixels, as in the lesson. `digitlab.baseline` stores the
fitted linear map as a `logreg` run, so everything below works on it as on any trained network.
"""),
    code('''
from digitlab.baseline import baseline

base = baseline("mnist", split="notebook-000", train_subset=5000 if QUICK else None, runs_dir=RUNS_DIR, report=False)
compare("baseline validation accuracy", "about 92%", f"{base.metrics['val']['accuracy']:.2%}")
base
'''),
    md("""
The lesson's confusion matrix shows frequent mix-ups of 7 and 9 and of 5 and 8, and none between
0 and 1. (The lesson passes `confusion_matrix(y_val_hat, y_val)`, so its rows are the predictions;
digitlab keeps scikit-learn's convention: rows are the true digits.)
"""),
    code('''
from digitlab import plots
from digitlab.evaluate import evaluate_run

ev = evaluate_run(base, "val", figures=False)
show(plots.confusion_matrix(ev["confusion_matrix"], ds.classes, base.path / "figures" / "val_confusion.png",
                            title="Baseline: confusion matrix (validation)"))
cm = np.array(ev["confusion_matrix"])
top = ", ".join(f"{t}->{p} ({n})" for t, p, n in ev["most_confused"][:6])
compare("most frequent confusions (true -> predicted)", "7 and 9, 5 and 8; never 0 and 1",
        f"{top}; 0<->1: {cm[0, 1] + cm[1, 0]}")
'''),
    md("""
## Task 1.1: logistic regression as a neural network

A network without hidden layer: 784 inputs, 10 softmax outputs. The model `logreg` is exactly that;
`format_summary` is Keras' `model.summary()` (shown as a table in Jupyter).
"""),
    code('''
from digitlab.models import build_model, count_parameters, format_summary

softmax = build_model("logreg")
compare("parameters", "7,850", f"{count_parameters(softmax):,} (by hand: 784 x 10 weights + 10 biases = {784 * 10 + 10:,})", trained=False)
format_summary(softmax)
'''),
    md("""
## Task 1.2: compile and fit

The recipe `notebook-000-logreg` is the lesson's `compile`/`fit`: sparse categorical cross-entropy,
Adam, `batch_size=64`, `epochs=15`, Keras' Glorot-uniform initialization. The progress bar and the
table of epochs update in place while it trains.
"""),
    code('''
EPOCHS = 2 if QUICK else 15
SUBSET = 5000 if QUICK else None  # train on a subset in quick mode

softmax_run = train(recipe_config("notebook-000-logreg", epochs=EPOCHS, train_subset=SUBSET,
                                  runs_dir=RUNS_DIR, report=False))
'''),
    md("A `Run` displays itself: what was trained, the final metrics and the learning curves."),
    code("softmax_run"),
    code('''
from digitlab.evaluate import evaluate_predictions
from digitlab.predict import Predictor

softmax_pred = Predictor.from_run(softmax_run.path)
y_val_hat_prob = softmax_pred.predict_proba(sp.val_x)  # 10 probabilities per image
y_val_hat = y_val_hat_prob.argmax(axis=1)  # the most probable class
print("y_val_hat_prob", y_val_hat_prob.shape, "  y_val_hat", y_val_hat.shape)
softmax_ev = evaluate_predictions(sp.val_y, y_val_hat_prob, ds.classes)
compare("validation accuracy of the softmax network", "no improvement over the baseline (~92%)",
        f"{softmax_ev['accuracy']:.2%} (baseline {base.metrics['val']['accuracy']:.2%})")
show(plots.confusion_matrix(softmax_ev["confusion_matrix"], ds.classes, softmax_run.path / "figures" / "val_confusion.png",
                            title="Softmax network: confusion matrix (validation)"))
'''),
    md("""
## Task 1.3 (extra): what was learned?

Each output unit has one weight per pixel: a 28x28 mask laid over the image. Ink on a red (positive)
weight speaks **for** the class, ink on a blue (negative) weight **against** it.
"""),
    code('''
from digitlab import explain

show(explain.weights_figure(softmax_pred.model, ds.classes, softmax_run.path / "figures" / "templates.png"))
'''),
    md("""
**y0:** a red ring where the strokes of a zero run and a blue centre: ink in the middle of the image
(where a 0 has none, but a 1 has) speaks against the zero.

## Task 2.1: one hidden layer of 36 units
"""),
    code('''
mlp = build_model("mlp", hidden=[36])
compare("parameters", "28,630", f"{count_parameters(mlp):,} (784 x 36 + 36 + 36 x 10 + 10)", trained=False)
format_summary(mlp)
'''),
    code('''
mlp_run = train(recipe_config("notebook-000-mlp", epochs=EPOCHS, train_subset=SUBSET, runs_dir=RUNS_DIR, report=False))
compare("validation accuracy of the MLP", "better than the baseline (~92%)",
        f"{mlp_run.metrics['val']['accuracy']:.2%} (softmax network {softmax_run.metrics['val']['accuracy']:.2%})")
mlp_run
'''),
    md("""
## Task 2.2 (extra): what was learned?

**2.2.1 Input to hidden layer.** Now there are 36 masks, one per hidden unit (not 10): each unit is a
learned feature. They do not look like digits, because no unit has to recognise a whole digit; the
output layer combines them.
"""),
    code('''
mlp_pred = Predictor.from_run(mlp_run.path)
fig_dir = mlp_run.path / "figures"
show(explain.weights_figure(mlp_pred.model, ds.classes, fig_dir / "masks.png"))
'''),
    md("""
**2.2.2 Hidden to output layer.** 36 x 10 weights: how much each feature counts for each digit. They
look structureless because the features have no natural order.
"""),
    code('show(explain.hidden_to_output_figure(mlp_pred.model, ds.classes, fig_dir / "hidden_to_output.png"))'),
    md("""
**2.2.3 Both layers together, for one image** (the lesson's `image_index = 2` of the validation set):
which features are active, and which of them speak for (green) or against (red) each class.
"""),
    code('''
image, label = sp.val_x[2], int(sp.val_y[2])
x = mlp_pred.scaler.transform(image[None])[0]  # what the model sees
probs = mlp_pred.predict_proba(image[None])[0]
show(explain.input_figure(image, probs, ds.classes, fig_dir / "input.png", f"validation image #2 (true {label})"))
show(explain.active_features_figure(mlp_pred.model, x, fig_dir / "active_features.png", "validation image #2"))
show(explain.contributions_figure(mlp_pred.model, x, ds.classes, fig_dir / "contributions.png", true=label))
'''),
    md("""
For the true class many strongly active features are green; for the other classes the same features
are mostly red or silent, so their probabilities stay near zero.

## Task 3 (extra): a CNN

Small 3x3 masks slid over the image instead of masks over the whole image. `cnn-small` is lesson 001's
CNN (conv 8, pool, conv 16, pool, dense 128, L2 1e-3); here on this lesson's split.
"""),
    code('''
cnn_run = train(recipe_config("notebook-001-cnn", split="notebook-000", epochs=1 if QUICK else 10,
                              train_subset=3000 if QUICK else None, runs_dir=RUNS_DIR, report=False))
compare("CNN validation accuracy", "no number (an open exercise)", f"{cnn_run.metrics['val']['accuracy']:.2%}")
show(explain.weights_figure(Predictor.from_run(cnn_run.path).model, ds.classes, cnn_run.path / "figures" / "filters.png"))
'''),
    md("## Summary"),
    code('''
rows = [("logistic regression (scikit-learn)", "~92%", base), ("softmax network", "~ the baseline", softmax_run),
        ("MLP, 36 hidden units", "better than the baseline", mlp_run), ("CNN (extra)", "-", cnn_run)]
print(f"{'model':<36}{'lesson':>28}{'digitlab val':>14}{'test':>9}")
for name, lesson, run in rows:
    print(f"{name:<36}{lesson:>28}{run.metrics['val']['accuracy']:>14.2%}{run.metrics['test']['accuracy']:>9.2%}")
'''),
]


# --- 02: lesson 001 -------------------------------------------------------------------------------

NB02 = [
    md("""
# 02 · Reading check digits: exploration, MLP, CNN, ResNet, hardest examples (lesson 001)

Lesson 001 (German, TensorFlow/Keras on Colab) frames a problem: reading the digits of a bank
check's date and amount fields. We assume the digits are already cut out, so:

- **input**: an image of one digit, x;
- **prediction**: which of 0-9 it shows: a **classification** into 10 classes, p(y | x);
- **measure**: accuracy, the share of digits read right (plus confusion matrix, precision/recall/F1).

`DIGITLAB_QUICK=1` shortens the trainings (CI).
"""),
    code(SETUP),
    md("""
## Data: MNIST as TFDS serves it

`tfds.load('mnist', split=['train[:70%]', 'train[70%:]', 'test'])`: digitlab's split scheme
`notebook-001` takes the same slices of the official training file.
"""),
    code('''
from digitlab.data import load_dataset, split

ds = load_dataset("mnist")
sp = split(ds, "notebook-001")
compare("train / validation / test", "70% / 30% of 60,000, and 10,000 (42,000 / 18,000 / 10,000)",
        f"{len(sp.train_y):,} / {len(sp.val_y):,} / {len(sp.test_y):,}", trained=False)
'''),
    md("""
## First look at the data

What do the images look like, how big are they, which values do the pixels take, how are the classes
distributed? `digitlab.explore` answers all of it and draws the pictures.
"""),
    code('''
from digitlab.explore import explore

info = explore("mnist", out=f"{RUNS_DIR}/explore-mnist")
print(f"{info['size']:,} images of {info['image_shape']} {info['dtype']} pixels, labels {info['labels']}")
compare("pixel range", "Min: 0 - Max: 255", f"Min: {info['min']} - Max: {info['max']}", trained=False)
show(info["figures"]["samples"])
show(info["figures"]["class_distribution"])
'''),
    md("""
The classes are roughly balanced, which matters for reading the accuracy later.

## A first model: MLP with 128 hidden units

Flatten, dense 128 with ReLU, dense 10 (logits), Adam 1e-3, sparse categorical cross-entropy from
logits, batch 128, 15 epochs, pixels / 255: the recipe `notebook-001-mlp`.
"""),
    code('''
from digitlab.models import build_model, count_parameters, format_summary

compare("parameters", "784 x 128 + 128 + 128 x 10 + 10 = 101,770", f"{count_parameters(build_model('mlp', hidden=[128])):,}", trained=False)
format_summary(build_model("mlp", hidden=[128]))
'''),
    code('''
QUICK_SUBSET = 5000 if QUICK else None
mlp_run = train(recipe_config("notebook-001-mlp", epochs=2 if QUICK else 15, train_subset=QUICK_SUBSET,
                              runs_dir=RUNS_DIR, report=False))
'''),
    code('''
m = mlp_run.metrics
compare("accuracy train / validation / test", "about 97%",
        f"{m['train']['accuracy']:.2%} / {m['val']['accuracy']:.2%} / {m['test']['accuracy']:.2%}")
mlp_run
'''),
    md("""
## Which digits work well, which do not?

Confusion matrix and classification report on the validation set, as in the lesson.
"""),
    code('''
from digitlab import plots
from digitlab.evaluate import evaluate_run, format_report

ev = evaluate_run(mlp_run, "val", figures=False)
show(plots.confusion_matrix(ev["confusion_matrix"], ds.classes, mlp_run.path / "figures" / "val_confusion.png",
                            title="MLP: confusion matrix (validation)"))
print(format_report(ev))
'''),
    md("""
## The hardest examples

The validation images with the lowest probability for their true class. Often they are hard to read
for people too; sometimes the label itself is wrong.
"""),
    code('''
hard = ev["hardest"][:10]
for h in hard[:5]:
    print(f"[{h['index']}] true {h['true']}, predicted {h['pred']}, p(true) = {h['prob_true']:.2e}")
show(plots.hardest_examples(sp.val_x[[h["index"] for h in hard]], [h["true"] for h in hard], [h["pred"] for h in hard],
                            [h["prob_true"] for h in hard], ds.classes, mlp_run.path / "figures" / "val_hardest.png"))
'''),
    md("""
## A better model: a CNN with L2 and max-pooling

Two 3x3 convolutions (8 and 16 filters) with ReLU and max-pooling, dense 128, dense 10, L2 1e-3 on
every kernel, 10 epochs: `notebook-001-cnn`.
"""),
    code('format_summary(build_model("cnn-small"))'),
    code('''
cnn_run = train(recipe_config("notebook-001-cnn", epochs=1 if QUICK else 10, train_subset=QUICK_SUBSET,
                              runs_dir=RUNS_DIR, report=False))
c = cnn_run.metrics
gap = lambda r: r.metrics["train"]["accuracy"] - r.metrics["val"]["accuracy"]
compare("CNN accuracy train / validation / test", "better validation and test results than the MLP, no more overfitting",
        f"{c['train']['accuracy']:.2%} / {c['val']['accuracy']:.2%} / {c['test']['accuracy']:.2%} "
        f"(MLP {m['val']['accuracy']:.2%} / {m['test']['accuracy']:.2%}); train-val gap {gap(cnn_run):+.2%} vs MLP {gap(mlp_run):+.2%}")
cnn_run
'''),
    md("""
## A ready-made architecture: ResNet-50

The lesson loads Keras' `ResNet50(weights=None, classes=10)` on input zero-padded to 32x32.
`resnet50-padded` is the same network in PyTorch (about 23.5 million parameters).

On a CPU this is slow: the lesson's 10 epochs over 42,000 images take about 35 minutes on two cores
(a GPU on Colab needs a few). Quick mode trains a ResNet-50 of 1/16 width for one epoch on 1,000 images,
only to show that the cell works.
"""),
    code('''
# quick mode: 1/16 of the width, 1,000 training and 500 validation images, one epoch
resnet_options = {"width": 4} if QUICK else {}
quick_data = {"train_subset": 1000, "split": "default", "val_size": 500} if QUICK else {}
print(f"ResNet-50 parameters: {count_parameters(build_model('resnet50-padded', **resnet_options)):,}")
resnet_run = train(recipe_config("notebook-001-cnn", model="resnet50-padded", model_options=resnet_options,
                                 epochs=1 if QUICK else 10, runs_dir=RUNS_DIR, report=False, **quick_data))
r = resnet_run.metrics
compare("ResNet-50 accuracy train / validation / test",
        "no big advantage over the small models: MNIST is small and it would need longer training",
        f"{r['train']['accuracy']:.2%} / {r['val']['accuracy']:.2%} / {r['test']['accuracy']:.2%}")
resnet_run
'''),
    md("## Summary"),
    code('''
print(f"{'model':<12}{'parameters':>12}{'train':>9}{'val':>9}{'test':>9}")
for name, run in (("MLP 128", mlp_run), ("CNN", cnn_run), ("ResNet-50", resnet_run)):
    mm = run.metrics
    n = count_parameters(build_model(run.config["model"], **run.config["model_options"]))
    print(f"{name:<12}{n:>12,}{mm['train']['accuracy']:>9.2%}{mm['val']['accuracy']:>9.2%}{mm['test']['accuracy']:>9.2%}")
print("lesson: MLP about 97%; the CNN better; ResNet-50 no big advantage")
'''),
]


# --- 03: lesson 002 -------------------------------------------------------------------------------

NB03 = [
    md("""
# 03 · Karpathy's recipe, end to end (lesson 002)

Lesson 002 (German, PyTorch) follows [Karpathy's recipe](https://karpathy.github.io/2019/04/25/recipe/):

1. explore the data, 2. model and training loop, 3. evaluate, 4. overfit, 5. regularize, 6. optimize.

The lesson writes the training loop, the loss averaging and the evaluation by hand; digitlab has them
built in, so each step is a few lines. The lesson prints no accuracies of its own (its cells are
exercises), so the lines below state what the lesson expects and what digitlab measured.
`DIGITLAB_QUICK=1` shortens the trainings.
"""),
    code(SETUP),
    md("""
## 1. Data exploration

### 1.1 Which format do the data have?
"""),
    code('''
from digitlab.explore import explore

info = explore("mnist", out=f"{RUNS_DIR}/explore-mnist")
size_input = int(np.prod(info["image_shape"]))
print("number of images:     ", info["size"])
print("input dimension:      ", size_input, f"({info['image_shape'][0]} x {info['image_shape'][1]})")
print("input container:      ", info["container"])
print("input dtype:          ", info["dtype"])
print("label dtype:          ", info["label_dtype"])
print("input range:          ", f"[{info['min']}, {info['max']}]")
print("labels:               ", info["labels"])
compare("data format", "70,000 images of 784 values in [0, 255] (OpenML: float64; labels are strings '0'..'9')",
        f"{info['size']:,} images of {size_input} values in [{info['min']}, {info['max']}] ({info['dtype']}; labels {info['label_dtype']})", trained=False)
'''),
    md("### What do the data contain?"),
    code('''
from digitlab.data import load_dataset, one_hot, make_scaler, split

ds = load_dataset("mnist")
fig, axs = plt.subplots(5, 5, figsize=(8, 8))
for i, ax in enumerate(axs.flat):
    ax.imshow(ds.train_images[i], cmap="gray")
    ax.set_title(f"label = {ds.classes[ds.train_labels[i]]}")
    ax.axis("off")
plt.tight_layout()
plt.show()
'''),
    md("### 1.2 Which classes are there and how are they distributed?"),
    code('''
counts = np.array([info["train"]["class_counts"][c] + info["test"]["class_counts"][c] for c in info["classes"]])
plt.bar(info["classes"], counts, edgecolor="black")
plt.xlabel("Label")
plt.ylabel("Count")
plt.title("Histogram of the labels (train + test)")
plt.show()
compare("class balance", "roughly uniform, needs no further treatment",
        f"{counts.min():,} to {counts.max():,} images per class", trained=False)
'''),
    md("""
### 1.3 How do we make the classes understandable to the model?

One-hot encoding: 3 -> [0,0,0,1,0,0,0,0,0,0]. (digitlab's training uses the integer labels with a
cross-entropy that does the same internally; `one_hot` is there when you need the matrix.)
"""),
    code('''
labels = one_hot(np.concatenate([ds.train_labels, ds.test_labels]), ds.num_classes)
compare("shape of the one-hot labels", "(70000, 10)", labels.shape, trained=False)
'''),
    md("""
### 1.4 Which scaling makes sense?

Min-max scaling to [-1, 1]: the `symmetric` scaler, fitted on the training images only.
"""),
    code('''
images = np.concatenate([ds.train_images, ds.test_images])
scaler = make_scaler("symmetric").fit(ds.train_images)
scaled = scaler.transform(images)
print("min/max before scaling:", images.min(), images.max())
compare("min/max after scaling", "-1.0 1.0", f"{scaled.min().item():.1f} {scaled.max().item():.1f}", trained=False)
'''),
    md("""
## 2. Model and training loop

### 2.1 The model: an MLP with three hidden layers of 64 ReLU units
"""),
    code('''
from digitlab.models import build_model, count_parameters, format_summary

mlp = build_model("mlp", hidden=[64, 64, 64])
compare("parameters", "784 x 64 + 64 + 2 x (64 x 64 + 64) + 64 x 10 + 10 = 59,210", f"{count_parameters(mlp):,}", trained=False)
format_summary(mlp)
'''),
    md("""
### 2.2 / 2.3 The training loop, tested for two epochs

`train()` is the lesson's loop: a shuffled batch at a time, cross-entropy, `zero_grad`, `backward`,
`step`, with a progress bar (the lesson's `tqdm`) and the average loss per epoch. The lesson's test:
Adam with default values, batch 256, two epochs; *the loss should fall with every epoch*. digitlab
records the training loss averaged while the epoch runs: the cheaper way the lesson describes.
"""),
    code('''
SUBSET = 10000 if QUICK else None
test_run = train(recipe_config("notebook-002-mlp", batch_size=256, epochs=2, train_subset=SUBSET,
                               runs_dir=RUNS_DIR, report=False))
losses = [row["train_loss"] for row in test_run.history]
compare("training loss, epoch 1 -> 2", "falls with every epoch",
        f"{losses[0]:.4f} -> {losses[1]:.4f} ({'falls' if losses[1] < losses[0] else 'does NOT fall'})")
'''),
    md("""
## 3. Evaluate

Accuracy alone hides which classes are hard and misleads on unbalanced data; the lesson asks for the
**F1 score** and the **confusion matrix**. It tests its evaluation on an untrained MLP first: we do
the same, then train the lesson's model (recipe `notebook-002-mlp`: Adam, batch 64, 10 epochs).
"""),
    code('''
import torch

from digitlab import plots
from digitlab.evaluate import evaluate_predictions, evaluate_run

sp = split(ds)  # the default split: official test set, 5,000 validation images
untrained = build_model("mlp", hidden=[64, 64, 64]).eval()
with torch.no_grad():
    probs = torch.softmax(untrained(make_scaler("symmetric").fit(sp.train_x).transform(sp.test_x).unsqueeze(1)), 1)
before = evaluate_predictions(sp.test_y, probs.numpy(), ds.classes)
compare("F1 (macro) of the untrained MLP", "near chance (about 0.1 or less)", f"{before['report']['macro avg']['f1-score']:.3f}", trained=False)
'''),
    code('''
EPOCHS = 2 if QUICK else 10
plain_run = train(recipe_config("notebook-002-mlp", epochs=EPOCHS, train_subset=SUBSET, runs_dir=RUNS_DIR, report=False))
after = evaluate_run(plain_run, "test", figures=False)
compare("F1 (macro) and accuracy of the trained MLP on the test set", "no number given",
        f"F1 {after['report']['macro avg']['f1-score']:.4f}, accuracy {after['accuracy']:.2%}")
show(plots.confusion_matrix(after["confusion_matrix"], ds.classes, plain_run.path / "figures" / "confusion.png"))
'''),
    md("""
## 4. Overfit

Karpathy: before regularizing, make sure the model *can* fit: train on a single batch until the loss
is (nearly) zero. A model and loop that cannot do that have a bug.
"""),
    code('''
overfit_run = train(recipe_config("notebook-002-mlp", train_subset=64, batch_size=64, lr=1e-2 if QUICK else 3e-3,
                                  epochs=15 if QUICK else 100,
                                  runs_dir=RUNS_DIR, report=False), progress="quiet")
last = overfit_run.history[-1]
compare("one batch of 64 images: final training loss / accuracy", "(near) zero loss, every image right",
        f"{last['train_loss']:.4f} / {last['train_acc']:.0%}; validation accuracy only {last['val_acc']:.2%}")
overfit_run
'''),
    md("""
## 5. Regularize

With the loop proven, fight the overfitting: more data (or augmented data), dropout, weight decay,
early stopping. Here dropout, weight decay (AdamW) and early stopping on the same MLP; the gap between
training and validation accuracy should shrink.
"""),
    code('''
reg_run = train(recipe_config("notebook-002-mlp", epochs=EPOCHS, train_subset=SUBSET,
                              model_options={"hidden": [64, 64, 64], "dropout": 0.2}, optimizer="adamw", weight_decay=0.05,
                              early_stopping=True, patience=3, runs_dir=RUNS_DIR, report=False))
# final accuracies, measured without dropout on the training images and on the validation set
gap = lambda r: r.metrics["train"]["accuracy"] - r.metrics["val"]["accuracy"]
compare("train-validation gap, plain -> regularized", "should shrink (no number given)",
        f"{gap(plain_run):+.2%} -> {gap(reg_run):+.2%}; validation accuracy {plain_run.metrics['val']['accuracy']:.2%} -> {reg_run.metrics['val']['accuracy']:.2%}")
'''),
    md("""
## 6. Optimize

Tune the learning rate: the range test (`lr_find`) raises it exponentially over 100 mini-batches and
reports where the loss falls fastest and where it is lowest. We train with fastai's rule of thumb, a
tenth of the rate at the lowest loss, and a one-cycle schedule (warm up, then anneal).
"""),
    code('''
from digitlab.studies import lr_find

base_cfg = recipe_config("notebook-002-mlp", epochs=EPOCHS, train_subset=SUBSET, runs_dir=RUNS_DIR, report=False)
found = lr_find(base_cfg, num_iter=60 if QUICK else 100, out=f"{RUNS_DIR}/lr-find-notebook-002", progress="quiet")
show(found.figure)
print(f"steepest descent at lr {found.suggestion:.3g}; lowest loss at lr {10 * found.min_loss_lr:.3g} (the recipe uses {base_cfg.lr:g})")
opt_run = train(base_cfg.replace(lr=found.min_loss_lr, schedule="one-cycle"))
'''),
    code('''
curves = {"plain (Adam 1e-3)": plain_run.history, "regularized": reg_run.history,
          f"one-cycle, lr {found.min_loss_lr:.2g}": opt_run.history}
show(plots.compare_curves(curves, opt_run.path / "figures" / "compare.png", "val_acc"))
print(f"{'run':<28}{'val':>9}{'test':>9}")
for name, run in zip(curves, (plain_run, reg_run, opt_run)):
    print(f"{name:<28}{run.metrics['val']['accuracy']:>9.2%}{run.metrics['test']['accuracy']:>9.2%}")
compare("best test accuracy of the recipe", "no number given",
        f"{max(r.metrics['test']['accuracy'] for r in (plain_run, reg_run, opt_run)):.2%}")
'''),
]


# --- 04: lesson 003 -------------------------------------------------------------------------------

NB04 = [
    md("""
# 04 · Fashion-MNIST: learning curves, random search, predictions, precision/recall/F1 (lesson 003)

Lesson 003 (English, Keras; after Géron's *Hands-On Machine Learning*) classifies Fashion-MNIST with an
MLP 300-100 trained by SGD, plots its learning curves, searches hyperparameters with
`RandomizedSearchCV`, predicts with class names and computes precision, recall and F1.

Fashion-MNIST is not bundled: digitlab finds it in `$DIGITLAB_DATA_DIR/fashion-mnist`, its cache, or
Debian's `dataset-fashion-mnist` package. `DIGITLAB_QUICK=1` shortens the trainings.
"""),
    code(SETUP),
    md("## The data"),
    code('''
from digitlab.data import load_dataset, split

ds = load_dataset("fashion-mnist")
print("train images", ds.train_images.shape, "labels", ds.train_labels.shape, " test images", ds.test_images.shape,
      " dtype", ds.train_images.dtype)
compare("training / test images", "60,000 / 10,000 grayscale images of 28x28 pixels, bytes 0..255",
        f"{len(ds.train_labels):,} / {len(ds.test_labels):,} of {ds.train_images.shape[1]}x{ds.train_images.shape[2]}, "
        f"{ds.train_images.dtype} {ds.train_images.min()}..{ds.train_images.max()}", trained=False)
'''),
    md("""
The lesson takes the first 5,000 training images for validation and divides by 255: the split
scheme `notebook-003` and the `unit` scaler.
"""),
    code('''
sp = split(ds, "notebook-003")
compare("train / validation / test", "55,000 / 5,000 / 10,000", f"{len(sp.train_y):,} / {len(sp.val_y):,} / {len(sp.test_y):,}", trained=False)
print("class names:", ds.classes)
plt.imshow(sp.train_x[0], cmap="binary")
plt.axis("off")
plt.show()
compare("the first training image is a", "Coat", ds.classes[sp.train_y[0]], trained=False)
'''),
    code('''
n_rows, n_cols = 4, 10
plt.figure(figsize=(n_cols * 1.2, n_rows * 1.2))
for index in range(n_rows * n_cols):
    plt.subplot(n_rows, n_cols, index + 1)
    plt.imshow(sp.train_x[index], cmap="binary", interpolation="nearest")
    plt.axis("off")
    plt.title(ds.classes[sp.train_y[index]], fontsize=10)
plt.subplots_adjust(wspace=0.2, hspace=0.5)
plt.show()
'''),
    md("""
## The model: MLP 300-100

Flatten, dense 300 ReLU, dense 100 ReLU, dense 10 softmax. Keras initializes kernels Glorot-uniform
and biases with zeros; so does the recipe.
"""),
    code('''
from digitlab.models import build_model, count_parameters, format_summary, init_weights

model = init_weights(build_model("mlp", hidden=[300, 100]), "glorot-uniform")
compare("parameters", "784 x 300 + 300 + 300 x 100 + 100 + 100 x 10 + 10 = 266,610", f"{count_parameters(model):,}", trained=False)
hidden1 = model.fc1
weights, biases = hidden1.weight.detach().numpy(), hidden1.bias.detach().numpy()
compare("first hidden layer: weights / biases", "(784, 300) as (from, to); biases all zero",
        f"{weights.shape} as PyTorch's (to, from); biases all zero: {bool((biases == 0).all())}", trained=False)
format_summary(model)
'''),
    md("""
## Training: SGD, batch 32, 30 epochs

`model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")` and
`model.fit(..., epochs=30, batch_size=32, validation_data=...)`: the recipe `notebook-003-mlp`
(plain SGD with Keras' default rate 0.01).
"""),
    code('''
run = train(recipe_config("notebook-003-mlp", epochs=2 if QUICK else 30, train_subset=3000 if QUICK else None,
                          runs_dir=RUNS_DIR, report=False))
'''),
    md("The history of every epoch is in `run.history`; its display draws the learning curves."),
    code('''
h = run.history[-1]
compare("validation accuracy after training", "87.2%", f"{h['val_acc']:.2%}")
compare("training vs validation accuracy at the end", "close together: no overfitting",
        f"{h['train_acc']:.2%} vs {h['val_acc']:.2%} (gap {h['train_acc'] - h['val_acc']:+.2%})")
run
'''),
    md("""
## Hyperparameter tuning: random search

The lesson searches `n_hidden` in {1, 2}, `n_neurons` in 50..299 and the learning rate in
{1e-1, ..., 1e-5} with `RandomizedSearchCV(n_iter=10)`, 30 epochs and `EarlyStopping(patience=10)`;
in the lesson the search crashed with a scikit-learn cloning error. digitlab's `tune` preset
`notebook-003` is that search, on Optuna with the random sampler, scored by validation accuracy,
with median pruning of hopeless trials. The best configuration is retrained and tested once.
"""),
    code('''
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # optuna imports tqdm.auto; we need no widgets
from digitlab.tune import preset_config, tune

space, base_cfg = preset_config("notebook-003", runs_dir=RUNS_DIR, report=False,
                                **({"epochs": 2, "train_subset": 1000} if QUICK else {}))
search = tune(space, base_cfg, n_trials=2 if QUICK else 10, sampler="random", study_name="notebook-003",
              out=f"{RUNS_DIR}/tune-notebook-003-{'quick' if QUICK else 'full'}", progress="quiet")
print(f"{'trial':>5}  {'state':<9}{'val acc':>8}{'epochs':>7}  parameters")
for t in search.trials:
    value = f"{t['value']:.2%}" if t["value"] is not None else "-"
    print(f"{t['number']:>5}  {t['state'].lower():<9}{value:>8}{t['epochs']:>7}  {t['params']}")
compare("best parameters / validation accuracy", "none: the search crashed with a cloning error",
        f"{search.best_params} / {search.best_value:.2%}, retrained: test accuracy {search.test_accuracy:.2%}")
show(search.figures["optimization_history"])
'''),
    md("""
## Testing the model

Like the lesson, we keep the original (untuned) model and evaluate it on the test set once.
"""),
    code('''
compare("test accuracy of the MLP 300-100", "no number given (model.evaluate)", f"{run.metrics['test']['accuracy']:.2%}")
'''),
    md("## Predictions with class names"),
    code('''
from digitlab.predict import Predictor

predictor = Predictor.from_run(run.path)
X_new, y_new = sp.test_x[:3], sp.test_y[:3]
y_proba = predictor.predict_proba(X_new)
print(y_proba.round(2))
y_pred = y_proba.argmax(axis=1)
print("predicted:", [ds.classes[i] for i in y_pred])
compare("true classes of the first three test images", "Ankle boot, Pullover, Trouser",
        ", ".join(ds.classes[i] for i in y_new), trained=False)
plt.figure(figsize=(7.2, 2.4))
for index, image in enumerate(X_new):
    plt.subplot(1, 3, index + 1)
    plt.imshow(image, cmap="binary", interpolation="nearest")
    plt.axis("off")
    plt.title(f"{ds.classes[y_pred[index]]}\\n(true {ds.classes[y_new[index]]})", fontsize=11)
plt.show()
'''),
    md("""
## All test predictions: confusion matrix, precision, recall, F1

Precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean; averaged over the classes
weighted by their support, as in the lesson.
"""),
    code('''
from digitlab import plots
from digitlab.evaluate import evaluate_run

ev = evaluate_run(run, "test", figures=False)
show(plots.confusion_matrix(ev["confusion_matrix"], ds.classes, run.path / "figures" / "confusion.png"))
w = ev["report"]["weighted avg"]
print(f"accuracy:  {ev['accuracy']:.4f}\\nprecision: {w['precision']:.4f}\\nrecall:    {w['recall']:.4f}\\nF1:        {w['f1-score']:.4f}")
show(plots.f1_bars(ev["report"], ds.classes, run.path / "figures" / "f1.png"))
'''),
    md("""
**Why does the weighted recall equal the accuracy?** Weighted by support, the recall is
sum over classes of (n_c / N) x (TP_c / n_c) = (sum of TP_c) / N: the share of right answers.
"""),
    code('''
compare("weighted recall - accuracy", "equal (the lesson asks why)", f"{w['recall'] - ev['accuracy']:.2e}")
'''),
    md("## Extra: how well would a linear support vector classifier perform?"),
    code('''
from digitlab.baseline import baseline

svc = baseline("fashion-mnist", kind="linear-svc", split="notebook-003", train_subset=2000 if QUICK else None,
               runs_dir=RUNS_DIR, report=False)
compare("linear SVC validation / test accuracy", "left open", f"{svc.metrics['val']['accuracy']:.2%} / {svc.metrics['test']['accuracy']:.2%} "
        f"(MLP {run.metrics['val']['accuracy']:.2%} / {run.metrics['test']['accuracy']:.2%})")
'''),
]


# --- 05: lesson 004 -------------------------------------------------------------------------------

NB05 = [
    md("""
# 05 · 8x8 digits: scaling, optimizers, learning rates, TensorBoard, initialization (lesson 004)

Lesson 004 (Polish, Keras) trains small networks on scikit-learn's 8x8 digits: StandardScaler,
one-hot labels, a tanh MLP with SGD, learning rates, Nesterov momentum, Adam, TensorBoard, and a study
of weight initializations. The data set is tiny, so every run takes seconds. `DIGITLAB_QUICK=1`
shortens the studies.
"""),
    code(SETUP),
    md("## The data set"),
    code('''
from digitlab.data import load_dataset, make_scaler, one_hot, split

ds = load_dataset("digits")
i = 42
plt.imshow(ds.train_images[i], interpolation="nearest")
plt.title(f"label: {ds.classes[ds.train_labels[i]]}")
plt.colorbar(label="ink (0..16)")
plt.show()
print(f"{len(ds.train_labels) + len(ds.test_labels):,} images of 8x8 values 0..{ds.max_value}")
'''),
    md("""
## Training and test data

The lesson splits 80/20 (`random_state=17`) and then `fit(..., validation_split=0.2)` keeps the last
20% of the training part for validation. digitlab's `default` split of the digits is a stratified 80/20
train/test split with a stratified 10% of the training part for validation.
"""),
    code('''
sp = split(ds)
compare("train / validation / test", "1,437 (1,150 + 287 validation) / 360",
        f"{len(sp.train_y) + len(sp.val_y):,} ({len(sp.train_y):,} + {len(sp.val_y):,} validation) / {len(sp.test_y):,}", trained=False)
'''),
    md("""
## Preprocessing: StandardScaler

Each pixel is centred and divided by its standard deviation over the training images (`standard`
scaler). The scaling is invertible: x = z * std + mean gives back the image.
"""),
    code('''
scaler = make_scaler("standard", max_value=ds.max_value).fit(sp.train_x)
z = scaler.transform(sp.train_x[142:143])[0].numpy()
back = z * scaler.stats["std"] + scaler.stats["mean"]
fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
for ax, img, title in zip(axes, (sp.train_x[142], z, back), ("original", "standardized", "inverse transform")):
    im = ax.imshow(img, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    fig.colorbar(im, ax=ax)
plt.show()
compare("standardized training pixels: mean / std", "0 / 1 per pixel",
        f"{scaler.transform(sp.train_x).mean():.3f} / {scaler.transform(sp.train_x).std():.3f}", trained=False)
'''),
    md("""
## Labels: one-hot

Keras' `to_categorical`: 9 -> [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]. digitlab trains on the integer labels
(the cross-entropy does this internally); `one_hot` shows the matrix.
"""),
    code('''
print(sp.train_y[:7])
one_hot(sp.train_y[:7], 10)
'''),
    md("""
## The network: tanh MLP [100], SGD lr 0.1, 15 epochs, batch 32

The recipe `notebook-004-mlp`. We also switch on TensorBoard logging (the lesson's `TensorBoard`
callback): scalars, weight histograms and the confusion matrix per epoch.
"""),
    code('''
from digitlab.models import build_model, count_parameters, format_summary

compare("parameters", "64 x 100 + 100 + 100 x 10 + 10 = 7,510",
        f"{count_parameters(build_model('mlp', (1, 8, 8), hidden=[100], activation='tanh')):,}", trained=False)
format_summary(build_model("mlp", (1, 8, 8), hidden=[100], activation="tanh"))
'''),
    code('''
EPOCHS = 3 if QUICK else 15
sgd_run = train(recipe_config("notebook-004-mlp", epochs=EPOCHS, tensorboard=True, runs_dir=RUNS_DIR, report=False))
sgd_run
'''),
    md("""
### Monitoring with TensorBoard

The run folder holds the TensorBoard logs. In Jupyter:

```
%load_ext tensorboard
%tensorboard --logdir runs
```
"""),
    code('''
logs = sorted(p.name for p in (sgd_run.path / "tensorboard").iterdir())
print("TensorBoard logs in", sgd_run.path / "tensorboard", ":", logs)
'''),
    md("""
## Optimizers and learning rates

The lesson asks: lower the rate by 10 or 100, raise it until training no longer converges, and add
Nesterov momentum 0.9. `lr_study` trains the same network once per rate, with plain SGD and with SGD +
Nesterov momentum, and gives every curve a verdict (ok, slow, stuck, unstable, diverged).
"""),
    code('''
from digitlab.studies import lr_study, study_config

lrs = (1e-3, 1e-1, 10.0) if QUICK else (1e-3, 1e-2, 1e-1, 1.0, 10.0)
lr_base = study_config(model_options={"hidden": [100], "activation": "tanh"}, epochs=3 if QUICK else 15, runs_dir=RUNS_DIR)
lr_res = lr_study(lr_base, lrs=lrs, out=f"{RUNS_DIR}/study-lr-notebook-004", progress="quiet")
show(lr_res.figure)
print(f"{'optimizer':<34}{'lr':>8}{'final loss':>12}{'val acc':>9}  verdict")
for row in lr_res.table:
    print(f"{row['group']:<34}{row['lr']:>8g}{row['final_train_loss']:>12.4f}{row['final_val_acc']:>9.2%}  {row['status']}")
'''),
    code('''
sgd = {c.label: c for c in lr_res.curves if c.group.startswith("SGD (")}
nag = {c.label: c for c in lr_res.curves if not c.group.startswith("SGD (")}
compare("lr 0.001 with plain SGD", "very slow: not converged after 15 epochs",
        f"final loss {sgd['lr 0.001'].final_loss:.3f}, verdict '{sgd['lr 0.001'].status}'")
compare("lr 0.001 with Nesterov momentum", "momentum softens a small rate (at least somewhat)",
        f"final loss {nag['lr 0.001'].final_loss:.3f} (plain SGD {sgd['lr 0.001'].final_loss:.3f})")
compare("lr 10 with plain SGD", "wanders around a good minimum, does not reach it even after 30 epochs",
        f"final loss {sgd['lr 10'].final_loss:.3f}, verdict '{sgd['lr 10'].status}' (lr 0.1: {sgd['lr 0.1'].final_loss:.3f})")
'''),
    md("### SGD with Nesterov momentum 0.9 at lr 0.1"),
    code('''
nesterov_run = train(recipe_config("notebook-004-mlp", epochs=EPOCHS, optimizer="nesterov", momentum=0.9,
                                   runs_dir=RUNS_DIR, report=False))
nesterov_run
'''),
    md("""
## Other optimizers: Adam

Adam with its default rate 1e-3 on two ReLU layers of 100 units. Adam adapts the step per weight, so
its default rate rarely needs tuning.
"""),
    code('''
adam_run = train(recipe_config("notebook-004-mlp", epochs=EPOCHS, optimizer="adam", lr=1e-3,
                               model_options={"hidden": [100, 100], "activation": "relu"}, runs_dir=RUNS_DIR, report=False))
adam_run
'''),
    md("## Results on the test set"),
    code('''
from digitlab.predict import Predictor

y_predicted = Predictor.from_run(adam_run.path).predict_proba(sp.test_x).argmax(axis=1)
fig, axes = plt.subplots(ncols=5, nrows=3, figsize=(12, 9))
for i, ax in enumerate(axes.ravel()):
    ax.imshow(sp.test_x[i], interpolation="nearest")
    ax.set_title(f"predicted label: {y_predicted[i]}\\n true label: {sp.test_y[i]}")
    ax.axis("off")
plt.show()
compare("test accuracy (Adam, 2 x 100 ReLU)", "printed as 'test acc' (no number in the lesson's text)",
        f"{np.mean(y_predicted == sp.test_y):.4f}")
'''),
    md("""
## Initialization and the optimizers

Keras initializes dense kernels Glorot-uniform. The lesson first tries `TruncatedNormal(stddev=0.01)`
on a [100, 100] tanh network and looks at the weights before training: small, and biases zero.
"""),
    code('''
from digitlab.models import init_weights

tn = init_weights(build_model("mlp", (1, 8, 8), hidden=[100, 100], activation="tanh"), "truncated-normal", std=0.01)
w, b = tn.fc1.weight.detach().numpy(), tn.fc1.bias.detach().numpy()
compare("std of the first layer's weights / biases", "about 0.0088 (a normal of std 0.01 cut at 2 std) / all zero",
        f"{w.std():.4f} / all zero: {bool((b == 0).all())}", trained=False)
'''),
    md("""
Now the lesson's study: Glorot uniform, a small (std 1e-3), a large (std 1) and a zero
initialization, each with SGD (lr 0.1), Adam and SGD + Nesterov momentum, 10 epochs, tanh [100, 100].
"""),
    code('''
from digitlab.studies import init_study

init_res = init_study(study_config(epochs=2 if QUICK else 10, runs_dir=RUNS_DIR), out=f"{RUNS_DIR}/study-init-notebook-004",
                      progress="quiet")
show(init_res.figure)
print(f"{'optimizer':<26}{'initialization':<38}{'final loss':>11}{'val acc':>9}  verdict")
for row in init_res.table:
    print(f"{row['group']:<26}{row['label']:<38}{row['final_train_loss']:>11.4f}{row['final_val_acc']:>9.2%}  {row['status']}")
'''),
    code('''
import math

curve = lambda opt, init: next(c for c in init_res.curves if c.group == opt and c.label.startswith(init))
zeros = [curve(o, "zeros").final_loss for o in ("SGD", "Adam", "SGD + Nesterov momentum")]
compare("zero init, final loss with SGD / Adam / Nesterov", f"no optimizer learns: the loss stays at ln 10 = {math.log(10):.4f}",
        " / ".join(f"{v:.4f}" for v in zeros))
compare("small init (std 1e-3) with SGD vs Adam", "SGD has big trouble (tiny gradients); Adam copes better",
        f"{curve('SGD', 'small').final_loss:.4f} ('{curve('SGD', 'small').status}') vs {curve('Adam', 'small').final_loss:.4f}")
large = curve("SGD + Nesterov momentum", "large")
glorot = curve("SGD + Nesterov momentum", "Glorot")
compare("large init (std 1) vs Glorot, Nesterov: validation accuracy", "large weights saturate: confident but worse",
        f"{large.history[-1]['val_acc']:.2%} vs {glorot.history[-1]['val_acc']:.2%}")
'''),
    md("""
## Summary

If a network does not learn at all (the loss stays where it started), check the initialization of
the weights, look at the gradients layer by layer, and try Adam instead of SGD.
"""),
]


NOTEBOOKS = {
    "01_baseline_softmax_mlp.ipynb": NB01,
    "02_check_digits_mlp_cnn_resnet.ipynb": NB02,
    "03_karpathy_recipe.ipynb": NB03,
    "04_fashion_mnist.ipynb": NB04,
    "05_digits_8x8_optimizers_init.ipynb": NB05,
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = notebook(cells)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
