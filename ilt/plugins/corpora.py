"""Built-in corpus preparation: ``ilt prepare mlc-slm``, ``kaldi`` and ``lhotse``."""

from __future__ import annotations

from ilt.hookspecs import hookimpl


@hookimpl
def ilt_register_corpora(register):
    from ilt.data.kaldi import prepare_kaldi
    from ilt.data.lhotse_recipes import prepare_lhotse
    from ilt.data.mlc_slm import prepare_mlc_slm

    register("mlc-slm", prepare_mlc_slm)
    register("kaldi", prepare_kaldi)
    register("lhotse", prepare_lhotse)
