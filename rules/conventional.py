"""Registry of the ten conventional enhancement methods used as pseudo-users.

Kosugi & Yamasaki (IEEE TCSVT 2023) build 25 rule-based "known users" by
applying ten conventional enhancement methods and fifteen Lightroom presets to
the FiveK originals.  This module lists the ten methods under the names of the
reference code's ``dataset/loader.py``.  Every entry's function maps a float32
RGB image in ``[0, 1]`` of shape ``(H, W, 3)`` to another one, with
keyword-only parameters whose defaults reproduce the pseudo-user.
"""

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rules.cdsa import cdsa
from rules.clahe import clahe
from rules.gcehistmod import gcehistmod
from rules.jiep import jiep
from rules.ldr import ldr
from rules.lime import lime
from rules.llf import llf
from rules.npea import npea
from rules.pie import pie
from rules.srie import srie


@dataclass(frozen=True)
class ConventionalMethod:
    """One conventional enhancement method.

    Attributes
    ----------
    name : str
        The paper's name of the pseudo-user (e.g. ``"LIME"``).
    function : callable
        ``function(image, **parameters) -> image`` on float32 RGB in ``[0, 1]``.
    reference : str
        Short citation of the method's paper.
    colour : str
        How the method handles colour (which channel it enhances).
    """

    name: str
    function: Callable[..., np.ndarray]
    reference: str
    colour: str

    @property
    def defaults(self):
        """Keyword defaults of :attr:`function`, read from its signature (a new dict)."""
        return {parameter.name: parameter.default
                for parameter in inspect.signature(self.function).parameters.values()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY}


METHODS = {method.name: method for method in (
    ConventionalMethod("CDSA", cdsa, "Wang et al., J. Opt. Soc. Am. A 34(1), 2017",
                       "HSI intensity and saturation"),
    ConventionalMethod("CLAHE", clahe, "Zuiderveld, Graphics Gems IV, 1994", "CIELAB L*"),
    ConventionalMethod("GCEHistMod", gcehistmod, "Arici et al., IEEE TIP 18(9), 2009",
                       "HSV value"),
    ConventionalMethod("JieP", jiep, "Cai et al., ICCV 2017", "HSV value"),
    ConventionalMethod("LDR", ldr, "Lee et al., IEEE TIP 22(12), 2013", "BT.709 luma (YUV)"),
    ConventionalMethod("LIME", lime, "Guo et al., IEEE TIP 26(2), 2017",
                       "per channel, shared illumination"),
    ConventionalMethod("LLF", llf, "Paris et al., SIGGRAPH 2011; Aubry et al., ACM TOG 33(5), 2014",
                       "luminance"),
    ConventionalMethod("NPEA", npea, "Wang et al., IEEE TIP 22(9), 2013",
                       "per channel, shared illumination"),
    ConventionalMethod("PIE", pie, "Fu et al., IEEE TIP 24(12), 2015", "HSV value"),
    ConventionalMethod("SRIE", srie, "Fu et al., CVPR 2016", "HSV value"),
)}
