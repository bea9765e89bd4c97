"""Facts of the Severstal format that every module shares (one place, no scattered literals)."""

IMAGE_HEIGHT = 256
IMAGE_WIDTH = 1600
IMAGE_SHAPE = (IMAGE_HEIGHT, IMAGE_WIDTH)

CLASS_IDS = (1, 2, 3, 4)
NUM_CLASSES = len(CLASS_IDS)
# Flip views of test-time augmentation (the predictor's TTA_DIMS gives their axes); the config
# loader checks distill.tta against them.
TTA_VIEWS = ("hflip", "vflip", "hvflip")
# Training engines (training/engines.py builds them; the config and the CLI offer them).
ENGINES = ("cpu", "gpu", "dp", "ddp")
# Names used in reports and the GUI; the challenge itself only numbers them.
CLASS_NAMES = {
    1: "pits and spots",
    2: "fine vertical lines",
    3: "scratches and streaks",
    4: "large patches",
}
# Okabe-Ito colours: told apart with the common colour-vision deficiencies, visible on grey steel.
# The web page and the error-analysis report draw classes in them.
CLASS_COLORS = {1: "#F0E442", 2: "#56B4E9", 3: "#D55E00", 4: "#CC79A7"}

# a real folder's labelled frames split into quarters by `demo --holdout K`: one is the test set
HOLDOUT_PARTS = 4
