"""A third-party plugin implementing every ilt hook once, with the contracts of
ilt.components and options declared as keyword parameters."""

from ilt import hookimpl
from ilt.components import Turn, Vote


class FakeBackbone:
    """The members of ilt.backbone.Backbone (the registry checks them when it
    builds one); it holds no model, so nothing can be trained or decoded."""

    name = "fake-backbone"
    sampling_rate = 16000
    max_input_seconds = 30.0

    def __init__(self, model_dir, *, dtype=None, device=None, flavour: str = "plain"):
        self.model_dir = model_dir
        self.flavour = flavour
        self.model = None

    def target_modules(self, spec):
        return [spec] if isinstance(spec, str) else list(spec)

    def tokenize(self, text, language=None):
        return text.split()

    def _no_model(self, *args, **kwargs):
        raise NotImplementedError("the fake backbone holds no model")

    collate = loss = features = generate = score = save = _no_model


class FakeAugmenter:
    def __init__(self, *, speed: float = 1.0):
        self.speed = speed

    def augment(self, prompts, targets, out_dir):
        return prompts


class FakeSelector:
    def __init__(self, *, keep: int = 10):
        self.keep = keep

    def select(self, pool, reference):
        return pool


class LongestVoter:
    """Votes for the longest hypothesis; agreement is the share of models that produced it."""

    def vote(self, hypotheses, language):
        best = max(hypotheses, key=lambda h: len(h.text))
        return Vote(best.text, sum(h.text == best.text for h in hypotheses) / len(hypotheses))


class FakeDiarizer:
    """Everyone is one speaker, talking all the time."""

    def __init__(self, *, label: str = "spk0"):
        self.label = label

    def diarize(self, session):
        return [Turn(0.0, session.duration, self.label)]


def fake_voter():
    return LongestVoter()


def fake_loss(*, scale: float = 0.0):
    def loss(backbone, model, batch):
        return scale
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


@hookimpl
def ilt_register_diarizers(register):
    register("fake-diarizer", FakeDiarizer)
