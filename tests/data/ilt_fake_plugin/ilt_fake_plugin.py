"""A third-party plugin implementing every ilt hook once."""

from ilt import hookspecs

hookimpl = hookspecs.hookimpl


class FakeBackbone:
    name = "fake-backbone"

    def __init__(self, model_dir, *, dtype=None, device=None):
        self.model_dir = model_dir


class FakeAugmenter:
    def __init__(self, **options):
        self.options = options

    def augment(self, cuts, out_dir):
        return cuts


class FakeSelector:
    def __init__(self, **options):
        self.options = options

    def select(self, pool, reference):
        return pool


def fake_voter(**options):
    def vote(hypotheses):
        return max(hypotheses, key=len)
    return vote


def fake_loss(**options):
    def loss(backbone, model, batch):
        return 0.0
    return loss


def prepare_fake(corpus_dir, out_dir, *, split="train", repeat=1):
    """Prepare the fake corpus."""
    return {split: ["cut"] * repeat}


@hookimpl
def ilt_register_backbones(register):
    register("fake-backbone", FakeBackbone)


@hookimpl
def ilt_register_augmenters(register):
    register("fake-augmenter", FakeAugmenter)


@hookimpl
def ilt_register_selectors(register):
    register("fake-selector", FakeSelector)


@hookimpl
def ilt_register_voters(register):
    register("longest", fake_voter)


@hookimpl
def ilt_register_losses(register):
    register("zero", fake_loss)


@hookimpl
def ilt_register_corpora(register):
    register("fake-corpus", prepare_fake)
